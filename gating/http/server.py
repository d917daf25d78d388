"""Serving the front: the Starlette app over one coordinator link, the listening socket,
uvicorn (with TLS), and the rules that decide whether it may serve at all.

- :func:`build_http` checks the settings and binds the address: it raises
  :class:`~edge_moe.errors.ConfigError` when the address is not ``host:port`` or cannot be
  bound, the key file is missing or empty, only one of the TLS files is given, or a
  non-loopback address would be served without API keys and TLS and without ``insecure`` (as
  ZeroMQ off loopback needs CURVE). :func:`serve_http` builds, prints the startup line
  ``http front <url> -> <endpoint>`` and serves until stopped.
- :class:`HttpThread` runs the front on a daemon thread beside the coordinator, in one process
  (``edge-moe deploy`` with ``coordinator.http``), serving the coordinator's own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware

from edge_moe.errors import ConfigError
from gating.coordinator.metrics import ServingMetrics
from gating.http.link import CoordinatorLink
from gating.http.routes import ROUTES, ApiKeyAuth, Front


def load_api_keys(path: str | os.PathLike[str] | None) -> list[str] | None:
    """Keys, one per line (blank lines and ``#`` comments skipped); None without a file."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: API key file not found")
    keys = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not keys:
        raise ConfigError(f"{p}: no API key in the file")
    return keys


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    app.state.front.link.close()


def make_app(link: CoordinatorLink, experts: Sequence[str] = (), api_keys: Sequence[str] | None = None,
             timeout_s: float = 60.0, metrics: ServingMetrics | None = None) -> Starlette:
    """The Starlette app over ``link``; with ``api_keys``, :class:`ApiKeyAuth` guards it.

    ``metrics``: the coordinator's (the front runs beside it, which counts every answer,
    these included); None: the front counts what passes through it, in metrics of its own.
    """
    front = Front(link, tuple(experts), timeout_s,
                  metrics if metrics is not None else ServingMetrics(), own=metrics is None)
    middleware = [Middleware(ApiKeyAuth, keys=list(api_keys))] if api_keys else []
    app = Starlette(routes=ROUTES, middleware=middleware, lifespan=_lifespan)
    app.state.front = front
    app.state.metrics = front.metrics
    return app


def _bind(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port`` (port 0: a free one), listening at once."""
    host, _, port_s = listen.rpartition(":")
    host = host.strip("[]")
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it
    # Nagle holds a response's second segment for the client's delayed ACK (~40 ms a reply)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_s)))
        # listening now, not when uvicorn starts: a client that connects as soon as the startup
        # line is printed waits in the backlog instead of being refused
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve HTTP on {listen}: {exc}") from exc
    return sock


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


@dataclass
class HttpFront:
    """A front built and bound (:func:`build_http`), not yet serving."""

    app: Starlette
    sock: socket.socket
    url: str
    endpoint: str
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def startup_line(self) -> str:
        """What :func:`serve_http` prints once bound (tests and benchmarks wait for it)."""
        return f"http front {self.url} -> {self.endpoint}"

    def serve(self) -> None:
        """Serve until stopped (SIGINT / SIGTERM)."""
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        uvicorn.Server(config).run(sockets=[self.sock])


def build_http(endpoint: str, listen: str = "127.0.0.1:8000", *, config: str | None = None,
               api_keys: str | None = None, insecure: bool = False, ssl_certfile: str | None = None,
               ssl_keyfile: str | None = None, timeout_s: float = 60.0,
               curve: tuple[bytes, bytes, bytes] | None = None) -> HttpFront:
    """The front for the coordinator frontend ``endpoint``, bound to ``listen`` (port 0: a
    free one). ``config``: a fleet YAML whose experts become model ids (pinning);
    ``api_keys``: a key file; ``timeout_s``: how long to wait for the coordinator;
    ``curve``: CURVE client keys ``(server_public, public, secret)`` for a coordinator with
    ``coordinator.curve: true`` (:func:`edge_moe.security.load_client_keys`).

    Raises:
        ConfigError: see the module docstring (the settings or the address are refused).
    """
    from edge_moe.config import load_fleet

    host, _, port_s = listen.rpartition(":")
    try:
        int(port_s)
    except ValueError:
        raise ConfigError(f"--listen {listen!r} is not host:port") from None
    keys = load_api_keys(api_keys)
    tls = bool(ssl_certfile and ssl_keyfile)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ConfigError("give both --ssl-certfile and --ssl-keyfile, or neither")
    if (keys is None or not tls) and not insecure and not _is_loopback(host):
        raise ConfigError(f"serving {listen} off loopback needs API keys and TLS "
                          "(--api-keys, --ssl-certfile, --ssl-keyfile), or --insecure")
    experts = [e.name for e in load_fleet(config).experts] if config else []
    sock = _bind(listen)
    app = make_app(CoordinatorLink(endpoint, curve), experts, keys, timeout_s)
    url = f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"
    return HttpFront(app, sock, url, endpoint, ssl_certfile, ssl_keyfile)


def serve_http(endpoint: str, listen: str = "127.0.0.1:8000", *, config: str | None = None,
               api_keys: str | None = None, insecure: bool = False, ssl_certfile: str | None = None,
               ssl_keyfile: str | None = None, timeout_s: float = 60.0,
               curve: tuple[bytes, bytes, bytes] | None = None) -> None:
    """:func:`build_http`, print the startup line, serve until stopped (``edge-moe http``)."""
    front = build_http(endpoint, listen, config=config, api_keys=api_keys, insecure=insecure,
                       ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_s=timeout_s,
                       curve=curve)
    print(front.startup_line, flush=True)
    front.serve()


class HttpThread:
    """The front on a daemon thread (uvicorn in its own event loop), for running beside the
    coordinator in one process (``edge-moe deploy`` with ``coordinator.http``).

    Raises:
        ConfigError: the address cannot be bound, or the key file is missing or empty.
    """

    def __init__(self, endpoint: str, listen: str, experts: Sequence[str] = (),
                 api_keys_file: str | None = None, metrics: ServingMetrics | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        keys = load_api_keys(api_keys_file)
        sock = _bind(listen)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        app = make_app(CoordinatorLink(endpoint, curve), experts, keys, metrics=metrics)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[sock])),
                                        name="edge-moe-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
