"""Runners that run on the deployed fleet: an expert scored and timed on its own node.

:func:`fleet_runners` returns one :class:`FleetRunner` per expert of a deployed fleet. Each
forwards to its node's Ray actor (:class:`~edge_moe.fleet.actors.NodeActor`), which calls the
runner the node serves with (its engine, precision and device) and times the call *there*:

- :meth:`FleetRunner.score_timed` → ``(log-probs, ms on the node, prompt tokens)``;
- :meth:`FleetRunner.measure_generation` → the timed generate calls, measured on the node
  (:func:`edge_moe.jobs.generation.measure_generation` run by the actor).

So ``edge-moe calibrate --fleet`` records the figures of the device that will serve, not of
the machine that runs the command; the Ray round trip is not in them. Run it on an idle
fleet: queries served meanwhile share the node's cores.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_moe.errors import FleetError

logger = logging.getLogger(__name__)


class FleetRunner:
    """One expert on its node, through the node's Ray actor (the runner interface calibrate uses)."""

    def __init__(self, actor: Any, node: str, expert: str, device_class: str, timeout_s: float = 600.0) -> None:
        self.actor, self.node, self.expert, self.device_class = actor, node, expert, device_class
        self.timeout_s = timeout_s
        self._tokens: tuple[str, int] | None = None

    def _get(self, ref: Any) -> Any:
        import ray

        from edge_moe.fleet.driver import reason

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except Exception as exc:
            raise FleetError(f"node {self.node}: expert '{self.expert}': {reason(exc)}") from exc

    def score_timed(self, prompt: str, options: list[str], mode: str = "letter") -> tuple[list[float], float, int]:
        lp, ms, tokens = self._get(self.actor.score_timed.remote(self.expert, prompt, list(options), mode))
        self._tokens = (prompt, tokens)
        return lp, ms, tokens

    def score_options(self, prompt: str, options: list[str], mode: str = "letter") -> list[float]:
        return self.score_timed(prompt, options, mode)[0]

    def encode(self, prompt: str) -> list[int]:
        """Token ids' stand-in: a list of the right length (from the last score of ``prompt``)."""
        if self._tokens is None or self._tokens[0] != prompt:
            self.score_timed(prompt, ["A", "B"])
        assert self._tokens is not None
        return [0] * self._tokens[1]

    def measure_generation(self, plan: list[Any]) -> list[Any]:
        return list(self._get(self.actor.measure_generation.remote(self.expert, list(plan))))


def fleet_runners(name: str | None = None, experts: list[str] | None = None) -> dict[str, FleetRunner]:
    """Expert name → :class:`FleetRunner` for a deployed fleet (all experts, or ``experts``).

    Raises:
        FleetError: no such deployment, an expert not in the fleet, or a node actor gone.
    """
    import ray

    from edge_moe.config import load_fleet
    from edge_moe.fleet.actors import node_actor_name
    from edge_moe.fleet.ops import connect

    dep = connect(name)
    fleet = load_fleet(dep.config)
    known = [e.name for e in fleet.experts]
    unknown = [e for e in experts or [] if e not in known]
    if unknown:
        raise FleetError(f"experts {unknown} are not in fleet '{dep.name}' (it has {known})")
    out = {}
    for e in fleet.experts:
        if experts and e.name not in experts:
            continue
        try:
            actor = ray.get_actor(node_actor_name(e.node), namespace=dep.namespace)
        except ValueError as exc:
            raise FleetError(f"fleet '{dep.name}': node {e.node}'s actor is gone ({exc})") from exc
        out[e.name] = FleetRunner(actor, e.node, e.name, fleet.node(e.node).device_class)
    return out
