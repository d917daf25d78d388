"""How the protocol writes a value out: non-finite floats for JSON, and short reprs for messages.

msgpack carries NaN and the infinities, JSON does not (``json.dumps(..., allow_nan=False)``
refuses them). This module holds the project's one rule for writing a float as JSON:

- ``None`` stays ``None``; ``+inf`` / ``-inf`` become the strings ``"inf"`` / ``"-inf"``;
- NaN becomes the string ``"nan"`` (the default: the wire's :func:`~edge_moe.wire.to_json`,
  the plan files of ``gating.planning.planner``, the HTTP front's ``edge_moe`` object) or,
  with ``nan_as_null=True``, ``None`` (benchmark records, where NaN is a figure that does not
  exist, such as the objective of the empty set: ``gating.offline.json_values``);
- any other number becomes a Python ``float``.

Both conventions are documented outputs, so both stay; they differ in that one parameter
only. :func:`finite_or_none` is the msgpack-side rule (NaN to None, the infinities kept), for
fields a REPLY carries as ``float | None``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger(__name__)


def json_float(v: Any, *, nan_as_null: bool = False) -> float | str | None:
    """One number as a JSON-safe value.

    Args:
        v: None, or anything ``float()`` accepts (Python or numpy numbers).
        nan_as_null: write NaN as None (JSON ``null``) instead of the string ``"nan"``.

    Returns:
        None for None; ``"nan"`` (or None with ``nan_as_null``) for NaN; ``"inf"`` /
        ``"-inf"`` for the infinities; else ``float(v)``.

    Raises:
        TypeError / ValueError: ``float(v)`` does.
    """
    if v is None:
        return None
    f = float(v)
    if math.isnan(f):
        return None if nan_as_null else "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f


def json_safe(v: Any, *, nan_as_null: bool = False) -> Any:
    """A nested value (maps, lists, tuples) with every float written by :func:`json_float`.

    Args:
        v: the value; maps keep their keys, tuples become lists.
        nan_as_null: passed to :func:`json_float`.

    Returns:
        The same structure, JSON-safe where it held non-finite floats. Values other than
        floats, maps, lists and tuples (ints, bools, strings, None) are returned as they are.
    """
    if isinstance(v, float):
        return json_float(v, nan_as_null=nan_as_null)
    if isinstance(v, dict):
        return {k: json_safe(x, nan_as_null=nan_as_null) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x, nan_as_null=nan_as_null) for x in v]
    return v


def finite_or_none(x: float | None) -> float | None:
    """For building replies: NaN becomes None (msgpack carries inf, but JSON does not).

    Args:
        x: None or a number.

    Returns:
        None for None and NaN, else ``float(x)`` (the infinities included).
    """
    return None if x is None or math.isnan(x) else float(x)


def short_repr(v: Any, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters (ending "...") for error messages.

    Args:
        v: any value, as a peer sent it.
        limit: the most characters returned.

    Returns:
        The repr, at most ``limit`` characters long.
    """
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."
