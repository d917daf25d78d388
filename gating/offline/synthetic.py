"""Seeded *synthetic* calibration tables and profiles, for tests and the planner demo.

Everything made here is labelled synthetic (in names and in the profiles' ``source``
notes): it exercises the gate, selector and planner, and says nothing about real LLMs.
Real tables come from ``edge-moe calibrate`` on the live fleet.

The generator gives each expert a skill per category and per latent "sub-topic", so a
gate over the embedding can learn who is good where; it also gives each expert a letter
bias, as small real LLMs have, so the prior correction has something to fix. Bigger
experts are more skilled, slower and hungrier, so the budget trade-off is real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_moe.calibration import CalibrationTable
from edge_moe.profiles import ExpertProfile, Figure, Profiles


def make_synthetic_table(
    n_samples: int = 1200,
    n_experts: int = 6,
    n_categories: int = 4,
    n_options: int = 4,
    embedding_dim: int = 32,
    seed: int = 0,
) -> tuple[CalibrationTable, np.ndarray]:
    """A seeded synthetic calibration table.

    Returns:
        (table, size) where ``size[n]`` in (0, 1] is expert n's relative size, used by
        :func:`make_synthetic_profiles` to make cost grow with skill.
    """
    rng = np.random.default_rng(seed)
    m, n, c, k, d = n_samples, n_experts, n_categories, n_options, embedding_dim
    n_sub = 3  # latent sub-topics per category
    size = np.sort(rng.uniform(0.1, 1.0, n))  # (N,) relative model size
    # (N, C, S) probability of answering correctly: base from size + specialisation
    special = rng.normal(0.0, 0.18, (n, c, n_sub))
    skill = np.clip(0.3 + 0.35 * size[:, None, None] + special, 0.2, 0.95)
    centroids = rng.normal(0.0, 1.0, (c, n_sub, d))  # (C, S, D)
    cats = rng.integers(0, c, m)
    subs = rng.integers(0, n_sub, m)
    emb = centroids[cats, subs] + rng.normal(0.0, 0.6, (m, d))  # (M, D)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, k, m)
    bias = rng.normal(0.0, 0.8, (n, k))  # (N, K) letter bias per expert
    correct = rng.random((m, n)) < skill[:, cats, subs].T  # (M, N)
    wrong = (labels[:, None] + rng.integers(1, k, (m, n))) % k  # (M, N) a different option
    pred = np.where(correct, labels[:, None], wrong)  # (M, N)
    confidence = 1.0 + 2.0 * size  # (N,) bigger experts are sharper
    logits = rng.normal(0.0, 0.5, (m, n, k)) + bias[None]  # (M, N, K)
    logits[np.arange(m)[:, None], np.arange(n)[None], pred] += confidence[None, :]
    logprobs = logits - np.logaddexp.reduce(logits, axis=2, keepdims=True)
    split = rng.choice(np.array([0, 1, 2], dtype=np.int8), m, p=[0.6, 0.2, 0.2])
    table = CalibrationTable(
        logprobs=logprobs.astype(np.float32),
        labels=labels.astype(np.int64),
        categories=cats.astype(np.int64),
        category_names=tuple(f"synth-cat-{j}" for j in range(c)),
        experts=tuple(f"synth-expert-{j}" for j in range(n)),
        embeddings=emb,
        split=split,
    )
    return table, size


def make_synthetic_profiles(
    table: CalibrationTable, size: np.ndarray, seed: int = 0, aggregation_ms: float = 2.0
) -> Profiles:
    """Synthetic profiles: latency and energy grow with expert size, vary by category.

    Every figure has source "modelled" and the note says synthetic.
    """
    rng = np.random.default_rng(seed + 1)
    experts = []
    for j, name in enumerate(table.experts):
        base_ms = 40.0 + 900.0 * size[j] ** 1.5
        lat = base_ms * rng.uniform(0.8, 1.3, table.n_categories)
        power_w = 8.0 + 40.0 * size[j]
        experts.append(
            ExpertProfile(
                name=name,
                node=f"synth-node-{j % 3}",
                latency_ms={c: Figure(float(v), "modelled") for c, v in zip(table.category_names, lat, strict=True)},
                energy_j={
                    c: Figure(float(v * power_w / 1000.0), "modelled")
                    for c, v in zip(table.category_names, lat, strict=True)
                },
            )
        )
    return Profiles(
        experts=tuple(experts),
        categories=table.category_names,
        aggregation_ms=aggregation_ms,
        note="synthetic profiles made by gating.offline.synthetic (not measurements)",
    )


def write_toy_inputs(
    out_dir: str | Path, n_experts: int, embedding_dim: int, seed: int, n_samples: int = 600,
    n_categories: int = 2, n_options: int = 4,
) -> tuple[CalibrationTable, Path, Path, Path]:
    """SYNTHETIC planner inputs for serving tests and benchmarks with toy experts.

    Writes ``calibration.npz``, ``profiles.json`` and a linear ``gate.onnx`` fitted to the
    train split (``edge_moe.runtime.toy``: no torch) into ``out_dir``.

    Returns:
        (table, calibration path, profiles path, gate path).
    """
    from edge_moe.calibration import TRAIN, save_calibration
    from edge_moe.profiles import save_profiles
    from edge_moe.runtime.toy import fit_linear_gate, write_linear_gate
    from gating.planning.mixture import fit_prior_correction

    d = Path(out_dir)
    table, size = make_synthetic_table(n_samples=n_samples, n_experts=n_experts, n_categories=n_categories,
                                       n_options=n_options, embedding_dim=embedding_dim, seed=seed)
    cal = save_calibration(table, d / "calibration.npz")
    prof = save_profiles(make_synthetic_profiles(table, size, seed=seed), d / "profiles.json")
    train = table.split_rows(TRAIN)
    label_lp = train.logprobs[np.arange(train.n_samples), :, train.labels]  # (M, N)
    gate = write_linear_gate(d / "gate.onnx", table.experts, embedding_dim,
                             fit_prior_correction(train.logprobs),
                             weights=fit_linear_gate(train.embeddings, label_lp))
    return table, Path(cal), Path(prof), Path(gate)


def write_example(out_dir: str, seed: int = 0) -> tuple[str, str]:
    """Write the committed example data: ``calibration.synthetic.npz`` + ``profiles.synthetic.json``."""
    import os

    from edge_moe.calibration import save_calibration
    from edge_moe.profiles import save_profiles

    table, size = make_synthetic_table(seed=seed)
    cal = save_calibration(table, os.path.join(out_dir, "calibration.synthetic.npz"))
    prof = save_profiles(make_synthetic_profiles(table, size, seed=seed),
                         os.path.join(out_dir, "profiles.synthetic.json"))
    return str(cal), str(prof)

