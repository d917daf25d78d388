"""The OpenAI-compatible front with the ``openai`` package: a chat completion, a multiple-choice
question with a budget (edge-moe's own fields), and a streamed chat.

    .venv/bin/python examples/openai_client.py [BASE_URL]

BASE_URL is the front's ``/v1`` URL (default ``$EDGE_MOE_HTTP``, else
``http://127.0.0.1:8000/v1``; ``edge-moe status`` shows a deployed front's address). The API
key is ``$EDGE_MOE_API_KEY`` (any string when the front runs without ``--api-keys``).
"""

from __future__ import annotations

import os
import sys

from openai import OpenAI


def main(base_url: str) -> int:
    client = OpenAI(base_url=base_url, api_key=os.environ.get("EDGE_MOE_API_KEY", "sk-none"),
                    max_retries=0, timeout=60)

    # 1. a chat completion: "edge-moe" is the ensemble (or name one expert to pin it)
    r = client.chat.completions.create(
        model="edge-moe", messages=[{"role": "user", "content": "Say hello in one word."}], max_tokens=8)
    em = r.model_extra["edge_moe"]
    print("chat:", repr(r.choices[0].message.content), "finish:", r.choices[0].finish_reason,
          "experts:", [(e["name"], round(e["weight"], 2)) for e in em["experts"]],
          f"energy: {em['energy_j']:.3g} J ({em['energy_source']})")

    # 2. multiple choice with an energy budget: the content is the chosen option
    r = client.chat.completions.create(
        model="edge-moe", messages=[{"role": "user", "content": "Which planet is largest?"}],
        extra_body={"edge_moe": {"energy_j": 1e6, "options": ["Mars", "Jupiter", "Venus", "Earth"]}})
    em = r.model_extra["edge_moe"]
    print("options:", repr(r.choices[0].message.content), "index:", em["answer_index"],
          "probabilities:", [round(p, 3) for p in em["probabilities"]])

    # 3. streamed: a sampled generation streams its text as the expert decodes it
    pieces = []
    stream = client.chat.completions.create(
        model="edge-moe", messages=[{"role": "user", "content": "Tell me about Paris."}],
        max_tokens=12, temperature=0.7, seed=1, stream=True, stream_options={"include_usage": True})
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    print("stream:", len(pieces), "chunks:", repr("".join(pieces)),
          "completion tokens:", usage.completion_tokens if usage else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EDGE_MOE_HTTP", "http://127.0.0.1:8000/v1")))
