"""CURVE keys for the coordinator's sockets (``zmq.auth``): generate and load them.

Folder layout written by :func:`generate_keys` (``edge-moe keys``), Z85 certificates as
``zmq.auth.create_certificates`` writes them::

    <dir>/server.key            coordinator public key  (copy to every client and node)
    <dir>/server.key_secret     coordinator key pair    (stays on the coordinator)
    <dir>/<name>.key(_secret)   one key pair per client or node ("client" by default)
    <dir>/authorized/<name>.key the public keys the coordinator accepts (ZAP allow-list)

The coordinator loads ``server.key_secret`` and ``authorized/``; a client or node loads
``server.key`` and its own ``<name>.key_secret``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_moe.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized_dir: Path


@dataclass(frozen=True)
class KeysWritten:
    """What :func:`generate_keys` did: the key pairs (by name) it created, kept as they
    were, and replaced (``--force``), and the clients a replaced server pair locks out."""

    directory: Path
    created: tuple[str, ...]
    kept: tuple[str, ...]
    replaced: tuple[str, ...]
    locked_out: tuple[str, ...]


def generate_keys(directory: str | os.PathLike[str], clients: tuple[str, ...] = ("client",),
                  force: bool = False) -> KeysWritten:
    """Make sure the folder holds a server key pair and one key pair per client name, each
    client authorised; safe to run again.

    An existing pair is kept unless ``force``: replacing the server pair locks out every
    client and node holding the old ``server.key`` (named in ``locked_out``: the clients in
    ``authorized/``), and replacing a client's pair locks out that client. Secret files are
    written 0600, the folder and ``authorized/`` 0700.

    Raises:
        ConfigError: the folder cannot be created or written (named, with the reason).
    """
    import zmq.auth

    d = Path(directory)
    created: list[str] = []
    kept: list[str] = []
    replaced: list[str] = []
    try:
        (d / "authorized").mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        os.chmod(d / "authorized", 0o700)
        before = sorted(p.stem for p in (d / "authorized").glob("*.key"))
        for name in dict.fromkeys(("server", *clients)):
            pair = [d / f"{name}.key", d / f"{name}.key_secret"]
            if all(p.is_file() for p in pair) and not force:
                kept.append(name)
                continue
            (replaced if any(p.exists() for p in pair) else created).append(name)
            for p in pair:
                p.unlink(missing_ok=True)
            zmq.auth.create_certificates(str(d), name)
            os.chmod(d / f"{name}.key_secret", 0o600)
        for name in clients:
            shutil.copy(d / f"{name}.key", d / "authorized" / f"{name}.key")
    except OSError as exc:
        raise ConfigError(f"cannot write CURVE keys to {d}: {exc.strerror or exc}") from exc
    locked = tuple(before) if "server" in replaced else tuple(n for n in replaced if n != "server")
    if locked:
        logger.warning("replaced key pairs %s: %s must get the new keys", replaced, list(locked))
    return KeysWritten(d, tuple(created), tuple(kept), tuple(replaced), locked)


def _load(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise ConfigError(f"{path}: CURVE key file not found (run `edge-moe keys`)")
    try:
        return zmq.auth.load_certificate(str(path))
    except Exception as exc:  # zmq.auth raises ValueError / OSError on malformed files
        raise ConfigError(f"{path}: not a CURVE certificate ({exc})") from exc


def load_server_keys(directory: str | os.PathLike[str] | None) -> ServerKeys:
    """The coordinator's key pair and allow-list folder.

    Raises:
        ConfigError: the folder or a file is missing or malformed.
    """
    if directory is None:
        raise ConfigError("coordinator.curve is on: give the keys folder (--curve-keys)")
    d = Path(directory)
    public, secret = _load(d / "server.key_secret")
    if secret is None or not (d / "authorized").is_dir():
        raise ConfigError(f"{d}: needs server.key_secret and an authorized/ folder")
    return ServerKeys(public, secret, d / "authorized")


def load_client_keys(directory: str | os.PathLike[str] | None,
                     name: str = "client") -> tuple[bytes, bytes, bytes]:
    """``(server_public, client_public, client_secret)`` for a client or node.

    Raises:
        ConfigError: the folder or a file is missing or malformed.
    """
    if directory is None:
        raise ConfigError("coordinator.curve is on: give the keys folder (--curve-keys)")
    d = Path(directory)
    server_public, _ = _load(d / "server.key")
    public, secret = _load(d / f"{name}.key_secret")
    if secret is None:
        raise ConfigError(f"{d / (name + '.key_secret')}: has no secret key")
    return server_public, public, secret


def connect_dealer(context: Any, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None,
                   identity: bytes | None = None) -> Any:
    """A DEALER on ``context`` (a ``zmq.Context`` or ``zmq.asyncio.Context``), linger 0,
    connected to ``endpoint``; a CURVE client when ``curve`` is ``(server_public,
    client_public, client_secret)`` (:func:`load_client_keys`)."""
    import zmq

    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if curve is not None:
        server_public, public, secret = curve
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
    sock.connect(endpoint)
    return sock
