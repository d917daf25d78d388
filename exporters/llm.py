"""Causal LM → one ONNX decoder with KV cache, plus tokenizer.json and a manifest.

The graph serves prefill and decode alike::

    inputs   input_ids            (batch, seq)            int64
             attention_mask       (batch, total)          int64, total = past + seq
             position_ids         (batch, seq)            int64
             past_key_values.{i}.key / .value  (batch, kv_heads, past, head_dim)  float32
    outputs  logits               (batch, seq, vocab)     float32
             present.{i}.key / .value          (batch, kv_heads, past + seq, head_dim)

Prefill passes past tensors with ``past = 0``. Sources: an HF checkpoint folder
(config.json + safetensors), a GGUF file (converted once to a cached safetensors folder,
because dequantising the GGUF dominates load time) or an asset name from
:mod:`exporters.assets`. Transformers is needed here only, never on the serving path.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError
from edge_moe.paths import artifacts_dir, cache_dir
from exporters.assets import REGISTRY, fetch_asset, sha256_file
from edge_moe.runtime.manifest import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    METADATA_KEY,
    Manifest,
    manifest_from_dict,
    write_manifest,
)

logger = logging.getLogger(__name__)

EXPORTER_VERSION = 2  # bump when the graph contract changes; invalidates cached exports
DEFAULT_OPSET = 18
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps one file at 2 GB
_CHAT_SENTINEL = "\x00EDGE_MOE_USER_MESSAGE\x00"
_TOKENIZER_PROBES = (
    "The capital of France is",
    "Answer: A B C D",
    "  leading spaces, ünïcödé and numbers 12345.\nnew line",
)


@dataclass(frozen=True)
class Source:
    """A resolved export source: an HF folder plus where it came from."""

    name: str
    hf_dir: Path
    path: Path
    format: str  # "hf_dir" | "gguf"
    sha256: str


def _dir_sha256(d: Path) -> str:
    """A digest of a checkpoint folder: the sha256 of its config and weight files."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in d.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file()
    )
    for p in files:
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def gguf_to_hf_dir(gguf: Path, sha256: str | None = None) -> Path:
    """Convert a GGUF file once to a cached fp32 safetensors folder and return it.

    Runs in a subprocess so the dequantisation's memory goes back to the OS before the
    export starts (DESIGN.md §6).

    Raises:
        ArtifactError: the file is missing or the conversion failed.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ArtifactError(f"GGUF file {gguf} does not exist")
    sha = sha256 or sha256_file(gguf)
    out = cache_dir() / "hf" / f"{gguf.stem}-{sha[:12]}"
    if (out / ".complete").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    t0 = time.perf_counter()
    code = (
        "import sys; from exporters.llm import _convert_gguf; "
        "_convert_gguf(sys.argv[1], sys.argv[2])"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(gguf), str(tmp)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ArtifactError(f"GGUF conversion of {gguf} failed:\n{tail}")
    (tmp / ".complete").write_text(json.dumps({"gguf": str(gguf), "sha256": sha}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    logger.info("converted %s to %s in %.1f s", gguf, out, time.perf_counter() - t0)
    return out


def _convert_gguf(gguf: str, out: str) -> None:
    """Subprocess body of :func:`gguf_to_hf_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf)
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; only the GGUF "quantizer" bookkeeping
    # remains, and it blocks save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def resolve_source(source: str | Path, name: str | None = None) -> Source:
    """Turn an asset name, GGUF file or HF folder into a :class:`Source`.

    Raises:
        ArtifactError: the source is none of these.
    """
    s = str(source)
    if s in REGISTRY:
        spec = REGISTRY[s]
        if spec.kind != "gguf":
            raise ArtifactError(f"asset {s!r} is a {spec.kind}, not a causal LM")
        path = fetch_asset(s)
        sha = spec.main.sha256 or sha256_file(path)
        return Source(name or s, gguf_to_hf_dir(path, sha), path, "gguf", sha)
    p = Path(s).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        sha = sha256_file(p)
        return Source(name or p.stem, gguf_to_hf_dir(p, sha), p, "gguf", sha)
    if p.is_dir() and (p / "config.json").is_file():
        return Source(name or p.name, p, p, "hf_dir", _dir_sha256(p))
    raise ArtifactError(
        f"export source {s!r} is not an asset ({sorted(k for k, v in REGISTRY.items() if v.kind == 'gguf')}), "
        "a .gguf file, or a folder with config.json"
    )


def load_causal_lm(hf_dir: Path) -> Any:
    """Load a transformers causal LM in fp32 eval mode with SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


def _text_config(model: Any) -> Any:
    return model.config.get_text_config(decoder=True)


def kv_geometry(model: Any) -> dict[str, int]:
    """Layers, KV heads, head size, vocabulary and context of a causal LM."""
    cfg = _text_config(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "num_layers": int(cfg.num_hidden_layers),
        "num_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "head_dim": int(head_dim),
        "vocab_size": int(cfg.vocab_size),
        "max_context": int(getattr(cfg, "max_position_embeddings", 2048)),
    }


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the decoder graph."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _wrapper(model: Any, num_layers: int) -> Any:
    """An nn.Module with flat tensor I/O around a HF causal LM and a DynamicCache."""
    import torch
    from transformers import DynamicCache

    class DecoderWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
            # A config-less DynamicCache keeps full-length layers, also for sliding-window
            # layers: their window is applied by the mask, and the graph stays uniform.
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(
                input_ids=input_ids,  # (B, T)
                attention_mask=attention_mask,  # (B, P+T)
                position_ids=position_ids,  # (B, T)
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]  # (B, kvH, P+T, hd) each
            return (out.logits, *present)  # logits (B, T, V)

    return DecoderWithPast().eval()


def _chat_parts(tok: Any) -> tuple[str | None, str | None, str | None]:
    template = getattr(tok, "chat_template", None)
    if not template:
        return None, None, None
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(_CHAT_SENTINEL) != 1:
        raise ArtifactError("chat template does not render the user message exactly once")
    prefix, suffix = rendered.split(_CHAT_SENTINEL)
    return template, prefix, suffix


def _special_tokens(tok: Any, model: Any) -> dict[str, Any]:
    eos: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for cand in (gen_eos, tok.eos_token_id, getattr(model.config, "eos_token_id", None)):
        for t in cand if isinstance(cand, (list, tuple)) else [cand]:
            if t is not None and int(t) not in eos:
                eos.append(int(t))
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_ids": eos,
        "pad_token_id": tok.pad_token_id,
        "eos_token": tok.eos_token,
        "bos_token": tok.bos_token,
    }


def load_tokenizer(hf_dir: Path) -> Any:
    """The checkpoint's transformers tokenizer, true to its tokenizer.json.

    transformers 5 picks the tokenizer class from the model type, and for some types
    (Qwen2) rebuilds it from vocab files a custom tokenizer.json does not have. When the
    result disagrees with the folder's tokenizer.json, the generic fast class is used.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(hf_dir)
    path = Path(hf_dir) / TOKENIZER_FILE
    if path.is_file():
        ref = Tokenizer.from_file(str(path))
        if any(list(tok(t)["input_ids"]) != ref.encode(t).ids for t in _TOKENIZER_PROBES):
            logger.info(
                "%s: %s disagrees with tokenizer.json; using the generic fast class",
                hf_dir,
                type(tok).__name__,
            )
            tok = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    return tok


def save_tokenizer(tok: Any, out_dir: Path) -> Path:
    """Write tokenizer.json and check it tokenises like transformers does.

    Raises:
        ArtifactError: the tokenizer is not a fast one, or the `tokenizers` file
            disagrees with transformers on a probe text.
    """
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ArtifactError(f"{type(tok).__name__} has no fast tokenizer to save")
    path = out_dir / TOKENIZER_FILE
    # Padding and truncation are request settings for the runner, not part of the file.
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(path))
    reloaded = Tokenizer.from_file(str(path))
    for text in _TOKENIZER_PROBES:
        want = tok(text)["input_ids"]
        got = reloaded.encode(text).ids
        if not want:
            raise ArtifactError(f"the tokenizer maps {text!r} to no tokens")
        if list(want) != list(got):
            raise ArtifactError(
                f"tokenizer.json disagrees with transformers on {text!r}: {got[:12]} vs {want[:12]}"
            )
    return path


def _example_inputs(geom: dict[str, int], batch: int = 2, seq: int = 3, past: int = 2) -> tuple:
    import torch

    # batch ≥ 2 and past ≥ 2, or torch.export specialises those axes (DESIGN.md §6).
    ids = torch.randint(0, geom["vocab_size"], (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [
        torch.zeros(batch, geom["num_kv_heads"], past, geom["head_dim"])
        for _ in range(2 * geom["num_layers"])
    ]
    return (ids, mask, pos, *kv)


def export_onnx(model: Any, path: Path, *, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export ``model`` to ``path`` as a KV-cache decoder; returns export facts.

    Raises:
        ArtifactError: torch.onnx.export failed (the cause is chained).
    """
    import torch

    geom = kv_geometry(model)
    in_names, out_names = io_names(geom["num_layers"])
    ctx = max(geom["max_context"], 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=ctx)
    past = torch.export.Dim("past", min=0, max=ctx)
    total = torch.export.Dim("total", min=1, max=2 * ctx)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * geom["num_layers"])),
    }
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = n_bytes > _EXTERNAL_DATA_BYTES
    wrapper = _wrapper(model, geom["num_layers"])
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                _example_inputs(geom),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as exc:  # torch raises many types here; all mean "export failed"
        raise ArtifactError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    export_s = time.perf_counter() - t0
    return {
        "program": program,
        "external_data": external,
        "export_s": round(export_s, 2),
        "inputs": in_names,
        "outputs": out_names,
        "geometry": geom,
    }


def _save_program(program: Any, path: Path, metadata: dict[str, str], external: bool) -> None:
    # Written in place: the manifest, written last, is what makes a folder an artifact.
    for k, v in metadata.items():
        program.model.metadata_props[k] = v
    program.save(str(path), external_data=external)


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


def _opset_of(program: Any) -> int:
    return int(program.model.opset_imports.get("", DEFAULT_OPSET))


def default_artifact_dir(name: str, precision: str) -> Path:
    return artifacts_dir() / name / precision


def decoder_manifest_fields(
    src: Source, model: Any, tok: Any, precision: str, opset: int,
    inputs: list[str], outputs: list[str], geom: dict[str, Any],
) -> dict[str, Any]:
    """The manifest fields every decoder exporter fills alike (all but ``extra``); the
    caller sets ``model_sha256`` once the file is final."""
    template, prefix, suffix = _chat_parts(tok)
    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": "decoder",
        "name": src.name,
        "architecture": type(model).__name__,
        "model_type": str(_text_config(model).model_type),
        "parameter_count": int(sum(p.numel() for p in model.parameters())),
        "precision": precision,
        "opset": opset,
        "model_file": MODEL_FILE,
        "model_sha256": "",
        "source": {"path": str(src.path), "format": src.format, "sha256": src.sha256},
        "inputs": inputs,
        "outputs": outputs,
        "tokenizer_file": TOKENIZER_FILE,
        "special_tokens": _special_tokens(tok, model),
        "chat_template": template,
        "chat_prefix": prefix,
        "chat_suffix": suffix,
        "decoder": {**geom, "kv_dtype": "float32"},
    }


def _cached_manifest(out_dir: Path, source_sha: str) -> Manifest | None:
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        m = manifest_from_dict(json.loads(path.read_text()), str(path))
    except (ArtifactError, json.JSONDecodeError):
        return None
    ok = (
        m.source.get("sha256") == source_sha
        and m.extra.get("exporter_version") == EXPORTER_VERSION
        and (out_dir / m.model_file).is_file()
        and (out_dir / m.tokenizer_file).is_file()
    )
    return m if ok else None


def export_decoder(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    parity: bool = True,
    force: bool = False,
) -> Path:
    """Export a causal LM to an fp32 ONNX decoder artifact; return the artifact folder.

    A cached artifact with the same source hash and exporter version is reused unless
    ``force``. With ``parity``, :func:`exporters.parity.check_decoder_parity` runs
    against the torch model and its report is stored in the manifest.

    Args:
        source: asset name, GGUF file, or HF checkpoint folder.
        out_dir: artifact folder (default ``$EDGE_MOE_CACHE/artifacts/<name>/fp32``).
        name: expert name recorded in the manifest (default: from the source).
        opset: ONNX opset.
        parity: run the parity check (raises ParityError on failure).
        force: re-export even if cached.

    Raises:
        ArtifactError: bad source, export failure, tokenizer mismatch.
        ParityError: the artifact disagrees with torch beyond tolerance.
    """
    src = resolve_source(source, name)
    out = Path(out_dir) if out_dir is not None else default_artifact_dir(src.name, "fp32")
    if not force and _cached_manifest(out, src.sha256) is not None:
        logger.info("reusing cached export %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_causal_lm(src.hf_dir)
    tok = load_tokenizer(src.hf_dir)
    load_s = time.perf_counter() - t0
    save_tokenizer(tok, out)
    _chat_parts(tok)  # a broken chat template fails here, before the slow export
    facts = export_onnx(model, out / MODEL_FILE, opset=opset)
    program = facts.pop("program")
    geom = facts.pop("geometry")
    import torch
    import transformers

    manifest_data: dict[str, Any] = {
        **decoder_manifest_fields(src, model, tok, "fp32", _opset_of(program),
                                  facts["inputs"], facts["outputs"], geom),
        "extra": {
            "exporter_version": EXPORTER_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_s": round(load_s, 2),
            "export_s": facts["export_s"],
            "external_data": facts["external_data"],
        },
    }
    # The embedded copy cannot hold the file's own hash; the sidecar does.
    _save_program(
        program,
        out / MODEL_FILE,
        {METADATA_KEY: json.dumps(manifest_data, sort_keys=True)},
        facts["external_data"],
    )
    del program
    gc.collect()
    manifest_data["extra"]["pretransposed_weights"] = pretranspose_tied_weights(
        out / MODEL_FILE, facts["external_data"]
    )
    gc.collect()
    manifest_data["model_sha256"] = sha256_file(out / MODEL_FILE)
    manifest = Manifest(**manifest_data)
    write_manifest(out, manifest)
    if parity:
        from exporters.parity import check_decoder_parity

        try:
            report = check_decoder_parity(model, out, tok=tok)
        except ArtifactError:
            # keep the files for inspection, but the folder is no artifact any more
            os.replace(out / MANIFEST_FILE, out / "manifest.parity-failed.json")
            raise
        manifest_data["extra"]["parity"] = report.to_dict()
        write_manifest(out, Manifest(**manifest_data))
    logger.info("exported %s to %s (%.1f s)", src.name, out, time.perf_counter() - t0)
    return out
