"""The typed Python client against a running fleet: an options query, a greedy generation, a
sampled one, and a cancel.

    .venv/bin/python examples/python_client.py [ENDPOINT]

ENDPOINT is the coordinator's frontend (``edge-moe status`` shows it; default
``$EDGE_MOE_ENDPOINT``, else ``tcp://127.0.0.1:5555``). Every call returns a ``Reply`` or an
``Error`` (docs/protocol.md); nothing here raises unless the coordinator does not answer.
"""

from __future__ import annotations

import os
import sys
import uuid

from edge_moe.client import EdgeMoEClient
from edge_moe.wire import Error, Query, Reply, Sampling


def describe(answer: Reply | Error) -> str:
    """One line: the answer, who gave it, what it cost."""
    if isinstance(answer, Error):
        return f"ERROR {answer.code}: {answer.message}"
    if answer.plan.status == "infeasible":
        return f"infeasible: {answer.plan.message} (fits from {answer.plan.min_energy_j} J)"
    experts = ", ".join(f"{u.name}={u.weight:.2f}" for u in answer.experts)
    what = (f"option {answer.answer_index}" if answer.answer_index is not None
            else f"text {answer.text!r} ({answer.finish_reason})")
    return f"{what} from [{experts}] in {answer.total_ms:.0f} ms, {answer.energy_j:.3g} J ({answer.energy_source})"


def main(endpoint: str) -> int:
    with EdgeMoEClient(endpoint, timeout_s=30, retries=1) as client:
        # 1. multiple choice under an energy budget: the gate-weighted mixture over the options
        options = ["Mars", "Jupiter", "Venus", "Earth"]
        r = client.query("Which planet is largest? A. Mars B. Jupiter C. Venus D. Earth Answer:",
                         options, energy_j=1e6)
        print("options:", describe(r))
        if isinstance(r, Reply) and r.probabilities is not None:
            print("  probabilities:", " ".join(f"{o}={p:.3f}" for o, p in zip(options, r.probabilities, strict=True)))

        # 2. a greedy generation: the chosen experts' weighted vote
        print("greedy:", describe(client.query("Say hello in one word.", max_new_tokens=8)))

        # 3. a sampled generation (temperature > 0): the gate's top expert answers alone;
        #    the same seed gives the same text
        sampling = Sampling(temperature=0.8, top_p=0.95, seed=42, logprobs=True)
        r = client.query("Tell me about Paris.", max_new_tokens=12, sampling=sampling)
        print("sampled:", describe(r))
        if isinstance(r, Reply) and r.token_logprobs:
            print("  first token:", repr(r.token_logprobs[0].token), f"logprob {r.token_logprobs[0].logprob:.3f}")

        # 4. cancel: send without waiting, then CANCEL on the same socket; the query is
        #    answered ERROR cancelled if it was still in flight (else its answer comes)
        q = Query(id=uuid.uuid4().hex[:16], prompt="Write a long story.", max_new_tokens=256,
                  sampling=Sampling(temperature=1.0, seed=1))
        client.send(q)
        client.cancel(q.id)
        answer = client.receive(q.id, timeout_s=30)
        if answer is None:
            print("cancel: no answer")
            return 1
        print("cancel:", "cancelled" if isinstance(answer, Error) and answer.code == "cancelled"
              else "finished before the cancel arrived", "-", describe(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EDGE_MOE_ENDPOINT", "tcp://127.0.0.1:5555")))
