"""This process as a Ray driver: ``ray.init`` into a fleet's cluster and namespace.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported, and a driver for a
loopback head must have it set to 0 first, else it advertises the eth0 address and never
reaches the head (docs/design.md §6). So every module of :mod:`edge_moe.fleet` imports ``ray``
lazily, inside functions, and :func:`ensure_connected` sets the environment before the
first import. Joining a head by explicit address also needs ``RAY_AUTH_MODE=token`` in the
driver.

:func:`reason` turns a Ray error (a long text with remote tracebacks) into its useful line,
for the messages of :class:`~edge_moe.errors.FleetError`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

from edge_moe.errors import FleetError

logger = logging.getLogger(__name__)


def ensure_connected(address: str, namespace: str, local: bool = True) -> None:
    """Connect this driver to the cluster at ``address`` in ``namespace`` (no-op when it is).

    Args:
        address: ``host:port``, ``"auto"`` or ``ray://host:port``.
        namespace: the fleet's Ray namespace.
        local: the head is one of ours on loopback: set Ray's environment for it.

    Raises:
        FleetError: nothing answers at ``host:port`` (checked in 2 s, not after
            ``ray.init``'s long retries).
    """
    if "ray" not in sys.modules:  # see the module docstring
        if local:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # the head's token (~/.ray/auth_token)
    import ray

    hostport = address.split("://")[-1]
    if address != "auto" and ":" in hostport and not address.startswith("ray://"):
        host, port = hostport.rsplit(":", 1)
        try:  # fail in a second, not after ray.init's long retries
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError as exc:
            raise FleetError(f"the Ray cluster at {address} does not answer: {exc}") from exc
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        if ctx.namespace == namespace and ctx.gcs_address.endswith(address.split(":")[-1]):
            return
        ray.shutdown()
    ray.init(address=address, namespace=namespace, logging_level=logging.WARNING,
             log_to_driver=False)


def disconnect() -> None:
    """Disconnect this driver (the cluster and the detached actors stay)."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


def reason(exc: BaseException) -> str:
    """The useful line of a Ray error (the first of our own exceptions in its text)."""
    text = str(exc)
    m = re.search(r"\b(\w+Error|\w+Exception): (.+)", text.split("Traceback")[-1]) or \
        re.search(r"\b(\w+Error|\w+Exception): (.+)", text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"[:500]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:500]
