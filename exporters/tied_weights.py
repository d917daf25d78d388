"""Tied output weights stored pre-transposed: a rewrite of a saved decoder graph.

A tied output layer (``lm_head.weight is embed_tokens.weight``) exports as
``MatMul(h, Transpose(W))``, and onnxruntime transposes the whole vocabulary matrix on
every call. :func:`pretranspose_tied_weights` stores ``W.T`` instead, still once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def pretranspose_tied_weights(path: Path, external: bool) -> int:
    """Store ``W.T`` for MatMuls that read ``Transpose(W)`` of an initializer; rewrite the file.

    A tied output layer (``lm_head.weight is embed_tokens.weight``) exports as
    ``MatMul(h, Transpose(W))``, and onnxruntime transposes the whole vocabulary matrix on
    every call (12% of SmolLM2's prefill at T=64; Gemma's is 262k × 640). The MatMuls get
    a transposed initializer instead. When the only other readers of ``W`` are embedding
    ``Gather``s over a graph input, they read the transposed copy too
    (``Transpose(Gather(W.T, ids, axis=1))``), so the weight is still stored once.

    Returns:
        the number of weights rewritten (0 leaves the file untouched).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in g.input}
    consumers: dict[str, list[tuple[Any, int]]] = {}
    nodes = list(g.node)  # one set of message objects, compared by identity below
    for node in nodes:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    done = 0
    for t in [n for n in nodes if n.op_type == "Transpose" and n.input[0] in inits]:
        w = inits[t.input[0]]
        perm = [list(a.ints) for a in t.attribute if a.name == "perm"]
        users = consumers.get(t.output[0], [])
        if len(w.dims) != 2 or (perm and perm[0] != [1, 0]) or not users:
            continue
        if any(n.op_type != "MatMul" or k != 1 for n, k in users):
            continue
        others = [(n, k) for n, k in consumers[w.name] if n is not t]
        gathers = all(
            n.op_type == "Gather"
            and k == 0
            and all(a.i == 0 for a in n.attribute if a.name == "axis")
            and n.input[1] in ranks
            for n, k in others
        )
        wt = numpy_helper.from_array(
            np.ascontiguousarray(numpy_helper.to_array(w).T), name=w.name + ".T"
        )
        g.initializer.append(wt)
        for n, _ in users:
            n.input[1] = wt.name
        g.node.remove(t)
        if gathers:
            for n, _ in others:
                rank = ranks[n.input[1]]
                out = n.output[0]
                n.input[0] = wt.name
                del n.attribute[:]
                n.attribute.append(helper.make_attribute("axis", 1))
                n.output[0] = out + ".hidden_first"
                idx = list(g.node).index(n)
                g.node.insert(
                    idx + 1,
                    helper.make_node(
                        "Transpose",
                        [n.output[0]],
                        [out],
                        name=n.name + ".to_batch_first",
                        perm=[*range(1, rank + 1), 0],
                    ),
                )
            g.initializer.remove(w)
        done += 1
    if done:
        data = path.with_name(path.name + ".data")
        if external:
            data.unlink(missing_ok=True)
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data.name,
        )
    return done
