"""The wire protocol's codec: frames to messages and back, and the typed error on every bad frame.

A message is three ZeroMQ frames::

    [PROTOCOL, TYPE, BODY]
    PROTOCOL  b"EMOE1"                  the version frame; anything else is refused
    TYPE      one byte, a MsgType value
    BODY      a msgpack map: the message's fields by name (str keys)

ROUTER envelopes (peer identity, and the empty delimiter frame clients send) are routing,
not protocol: sockets code strips them before :func:`decode` and adds them after
:func:`encode`, the only two frame builders in the codebase.

:func:`decode` checks the version frame, the type byte, and every field's presence and
type, and raises :class:`~edge_moe.errors.ProtocolError` saying what it got and what it
expected. It never raises anything else, whatever the bytes. It checks types, not values:
the value rules are :mod:`edge_moe.wire.checks`. Each message class gets a compiled
converter at import, so a schema the codec cannot read fails there, not on a peer's frame.

:func:`to_json` is the same message as JSON (the client's ``--json``).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import msgpack

from edge_moe.errors import ProtocolError
from edge_moe.wire.messages import (
    CLASS_OF,
    MAX_FRAME_BYTES,
    PROTOCOL,
    TYPE_OF,
    VERSION,
    Message,
    MsgType,
)
from edge_moe.wire.values import json_safe, short_repr

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- encode

# Per class: (field name, encoder or None, omit-when). None means msgpack packs the value as
# it is (str, int, float, bool, None, tuples and maps of those); nested dataclasses need one.
# A field added after a message's first release (``messages.added``) is left out of the
# frame while it holds its default (omit-when), so a peer that predates it never sees it.
_OMIT_NEVER = object()
_ENCODERS: dict[type, tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]] = {}


def _encoder_for(tp: Any) -> Callable[[Any], Any] | None:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [_encoder_for(a) for a in typing.get_args(tp) if a is not type(None)]
        enc = inner[0] if len(inner) == 1 else None
        return None if enc is None else (lambda v: None if v is None else enc(v))
    if origin is tuple:
        item = _encoder_for(typing.get_args(tp)[0])
        return None if item is None else (lambda v: [item(x) for x in v])
    if dataclasses.is_dataclass(tp):
        return lambda v: _plain_dataclass(v)
    return None


def _plain_dataclass(value: Any) -> dict[str, Any]:
    cls = type(value)
    fields = _ENCODERS.get(cls)
    if fields is None:
        hints = _hints(cls)
        fields = tuple((f.name, _encoder_for(hints[f.name]),
                        f.default if f.metadata.get("added") else _OMIT_NEVER)
                       for f in dataclasses.fields(cls))
        _ENCODERS[cls] = fields
    out = {}
    for name, enc, omit in fields:
        v = getattr(value, name)
        if omit is not _OMIT_NEVER and v == omit:
            continue
        out[name] = v if enc is None else enc(v)
    return out


def _plain(value: Any) -> Any:
    """Dataclasses → maps, tuples → lists; scalars as they are (for JSON and msgpack)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode(msg: Message) -> list[bytes]:
    """The frames ``[PROTOCOL, TYPE, BODY]`` of a message (no routing envelope).

    Raises:
        ProtocolError: ``msg`` is not one of the protocol's dataclasses.
    """
    kind = TYPE_OF.get(type(msg))
    if kind is None:
        raise ProtocolError(f"cannot encode {type(msg).__name__}: not a wire message "
                            f"(expected one of {[c.__name__ for c in TYPE_OF]})")
    body = msgpack.packb(_plain_dataclass(msg), use_bin_type=True)
    return [PROTOCOL, _TYPE_BYTES[kind], body]


_TYPE_BYTES = {t: bytes([int(t)]) for t in MsgType}


# --------------------------------------------------------------------------- decode


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


class _Bad(Exception):
    """A field failed its check: ``path`` below the message (".budget.energy_j"), ``msg``."""

    def __init__(self, path: str, msg: str) -> None:
        self.path, self.msg = path, msg


Converter = Callable[[Any], Any]
_CONVERTERS: dict[Any, Converter] = {}


def _converter(tp: Any) -> Converter:
    """A compiled checker for the annotation ``tp``: returns the value in the dataclass's
    types, or raises :class:`_Bad`. Built once per type, so decoding is a few calls per field."""
    conv = _CONVERTERS.get(tp)
    if conv is None:
        conv = _CONVERTERS[tp] = _build(tp)
    return conv


def _build(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner_types = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner_types) != 1:  # not used by any message
            raise TypeError(f"unsupported union {tp}")
        inner = _converter(inner_types[0])
        return lambda v: None if v is None else inner(v)
    if tp is str:
        def conv_str(v: Any) -> str:
            if type(v) is str:
                return v
            raise _Bad("", f"={short_repr(v)}: expected a string")
        return conv_str
    if tp is bool:
        def conv_bool(v: Any) -> bool:
            if type(v) is bool:
                return v
            raise _Bad("", f"={short_repr(v)}: expected true or false")
        return conv_bool
    if tp is int:
        def conv_int(v: Any) -> int:
            if type(v) is int:
                return v
            raise _Bad("", f"={short_repr(v)}: expected an integer")
        return conv_int
    if tp is float:
        def conv_float(v: Any) -> float:
            t = type(v)
            if t is float:
                return v  # type: ignore[no-any-return]
            if t is int:
                return float(v)
            raise _Bad("", f"={short_repr(v)}: expected a number")
        return conv_float
    if origin is tuple:
        item_t = typing.get_args(tp)[0]
        item = _converter(item_t)

        def conv_tuple(v: Any) -> tuple[Any, ...]:
            if type(v) is not list:
                raise _Bad("", f"={short_repr(v)}: expected an array of {_type_name(item_t)}")
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(item(x))
                except _Bad as e:
                    raise _Bad(f"[{i}]{e.path}", e.msg) from None
            return tuple(out)
        return conv_tuple
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        key, val = _converter(key_t), _converter(val_t)

        def conv_dict(v: Any) -> dict[Any, Any]:
            if type(v) is not dict:
                raise _Bad("", f"={short_repr(v)}: expected a map")
            out = {}
            for k, x in v.items():
                try:
                    kk = key(k)
                except _Bad as e:
                    raise _Bad(" key", e.msg) from None
                try:
                    out[kk] = val(x)
                except _Bad as e:
                    raise _Bad(f".{k}{e.path}", e.msg) from None
            return out
        return conv_dict
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp)
    raise TypeError(f"no decoder for {tp}")  # a bug in this module, caught at import


def _build_dataclass(cls: Any) -> Converter:
    hints = _hints(cls)
    spec = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec.append((f.name, _converter(hints[f.name]), required, _type_name(hints[f.name])))
    names = {s[0] for s in spec}
    expected = ", ".join(s[0] for s in spec)

    def conv_dataclass(v: Any) -> Any:
        if type(v) is not dict:
            raise _Bad("", f": expected a msgpack map, got {type(v).__name__} {short_repr(v)}")
        for k in v:
            if k not in names:
                raise _Bad("", f": unknown field {short_repr(k)} (expected fields: {expected})")
        kwargs = {}
        for name, conv, required, tname in spec:
            if name in v:
                try:
                    kwargs[name] = conv(v[name])
                except _Bad as e:
                    raise _Bad(f".{name}{e.path}", e.msg) from None
            elif required:
                raise _Bad("", f": missing required field '{name}' (a {tname})")
        return cls(**kwargs)
    return conv_dataclass


def decode(frames: list[bytes] | tuple[bytes, ...]) -> Message:
    """The message in ``[PROTOCOL, TYPE, BODY]`` frames (routing envelope already removed).

    Raises:
        ProtocolError: what was wrong, what was got and what was expected. No other
            exception escapes, whatever the input.
    """
    try:
        return _decode(frames)
    except ProtocolError:
        raise
    except Exception as exc:  # a decoder bug must still look like a refused frame
        raise ProtocolError(f"undecodable frames ({type(exc).__name__}: {exc})") from exc


def _decode(frames: list[bytes] | tuple[bytes, ...]) -> Message:
    if len(frames) != 3:
        raise ProtocolError(f"got {len(frames)} frames, expected 3: [{PROTOCOL!r}, type byte, msgpack body]")
    version, kind, body = (bytes(f) for f in frames)
    if version != PROTOCOL:
        raise ProtocolError(f"version frame {short_repr(version)}, expected {PROTOCOL!r} "
                            f"(edge-moe wire protocol version {VERSION})")
    if len(kind) != 1 or kind[0] not in CLASS_OF:
        raise ProtocolError(f"type frame {short_repr(kind)}, expected one byte in "
                            f"{ {int(t): t.name for t in MsgType} }")
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"body of {len(body)} bytes, expected at most {MAX_FRAME_BYTES}")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ExtraData, FormatError, ValueError, ...
        raise ProtocolError(f"body is not one msgpack value ({type(exc).__name__}: {exc})") from exc
    cls = CLASS_OF[kind[0]]
    try:
        return typing.cast(Message, _converter(cls)(raw))
    except _Bad as e:
        raise ProtocolError(f"{MsgType(kind[0]).name}{e.path}{e.msg}") from None


def to_json(msg: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict, its ``type`` name added.

    Non-finite floats are written by :func:`edge_moe.wire.values.json_safe` with NaN as the
    string ``"nan"`` (and the infinities as ``"inf"`` / ``"-inf"``): the client's ``--json``
    output keeps every figure a peer sent.

    Args:
        msg: one of the protocol's dataclasses.

    Returns:
        ``{"type": "REPLY", <field>: <value>, ...}``, nested dataclasses as maps, tuples as lists.

    Raises:
        KeyError: ``msg`` is not a wire message.
    """
    return {"type": TYPE_OF[type(msg)].name, **json_safe(_plain(msg))}


for _cls in TYPE_OF:  # compile every converter at import: a schema bug fails loudly here
    _converter(_cls)
