"""The fleet YAML's schema: every key with its type, default, unit and rule, in one table.

:data:`SCHEMA` holds one :class:`Key` per key of a fleet file. :mod:`edge_moe.config`
reads each section through it (a key the table lacks is an unknown key; each value is
checked by :meth:`Key.check`), and :func:`schema_markdown` renders the same table as
``docs/reference/fleet-yaml.md``, which a test holds equal to it. Defaults equal the
dataclass defaults of :mod:`edge_moe.config` (a test holds that too).

Key paths name a section and a key: ``nodes[].max_batch`` is ``max_batch`` of each
``nodes`` entry, ``device_classes.<name>.power_busy_w`` the ``power_busy_w`` of each class.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

RUNNER_NAMES = ("onnxruntime", "tensorrt", "llama.cpp")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
PREFIX_REUSE = ("exact", "tokens", "off")  # nodes[].prefix_reuse (edge_moe/runtime/gguf.py)
LLAMA_CPP_BATCH = ("off", "exact")  # nodes[].llama_cpp_batch (edge_moe/runtime/gguf_batch.py)
ENERGY_COUNTERS = ("nvml", "rapl", "jetson")
OBJECTIVES = ("accuracy", "loglik")

logger = logging.getLogger(__name__)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a key that must be given

# tcp://HOST:PORT (HOST: a name, an IPv4 address, [IPv6], or *; PORT: 0..65535 or *), ipc://PATH
ENDPOINT = re.compile(r"tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>\*|\d{1,5})|ipc://.+")
# Values read by Key.check; the other types are read by the loader's own code.
SCALARS = ("string", "text", "number", "integer", "bool", "choice", "list", "endpoint", "address", "any")


@dataclass(frozen=True)
class Key:
    """One key of the fleet YAML.

    Attributes:
        path: ``section.key`` (``coordinator.top_k``; top-level keys have no section).
        type: one of :data:`SCALARS`, or a type the loader reads itself (``mapping``,
            ``list``, ``mapping or file``, ``number or mapping``).
        default: the value when the key is absent; :data:`REQUIRED` when it must be given.
        unit: W, J, ms, s, bytes, ... ("" when none).
        doc: what it means, and any rule that spans keys.
        minimum / positive / allow_inf: for numbers and integers (``positive``: > 0).
        choices: the allowed values of a ``choice``, or of each item of a ``list``.
        nullable: ``null`` is allowed (and means what ``doc`` says).
        shown: the default as the docs show it, where the value alone would mislead.
    """

    path: str
    type: str
    default: Any = REQUIRED
    unit: str = ""
    doc: str = ""
    minimum: float = 0
    positive: bool = False
    allow_inf: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    shown: str = ""

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def rule(self) -> str:
        """The type and rule in words, for the docs."""
        t = self.type
        if t in ("number", "integer"):
            bound = "> 0" if self.positive else f"≥ {self.minimum:g}"
            text = f"{'integer' if t == 'integer' else 'number'} {bound}"
            text += " or `inf`" if self.allow_inf else ""
        elif t in ("choice", "list") and self.choices:
            text = ("one of " if t == "choice" else "list drawn from ") + ", ".join(f"`{c}`" for c in self.choices)
        else:
            text = {"string": "non-empty string", "text": "string", "bool": "`true` or `false`",
                    "endpoint": "`tcp://HOST:PORT` (PORT `0` or `*`: a free one) or `ipc://PATH`",
                    "address": "`HOST:PORT` (PORT 0..65535; `0`: a free one)", "any": "anything"}.get(t, t)
        return text + (" or `null`" if self.nullable else "")

    def check(self, v: Any) -> tuple[Any, str | None]:
        """``(value, None)`` for a good scalar value, else ``(None, "must be ...")``."""
        if v is None and self.nullable:
            return None, None
        t = self.type
        if t == "string":
            return (v, None) if isinstance(v, str) and v else (None, "must be a non-empty string")
        if t == "text":
            return (v, None) if isinstance(v, str) else (None, "must be a string")
        if t == "number":
            return self._number(v)
        if t == "integer":
            ok = not isinstance(v, bool) and isinstance(v, int) and v >= self.minimum
            return (v, None) if ok else (None, f"must be an integer >= {self.minimum:g}")
        if t == "bool":
            return (v, None) if isinstance(v, bool) else (None, "must be true or false")
        if t == "choice":
            return (str(v), None) if v in self.choices else (None, f"is not one of {list(self.choices)}")
        if t == "list":
            ok = isinstance(v, (list, tuple)) and all(c in self.choices for c in v)
            return (tuple(v), None) if ok else (None, f"must be a list drawn from {list(self.choices)}")
        if t == "endpoint":
            m = ENDPOINT.fullmatch(v) if isinstance(v, str) else None
            ok = m is not None and (m["port"] in (None, "*") or int(m["port"]) <= 65535)
            return (v, None) if ok else (None, "must be tcp://HOST:PORT (port 0..65535; 0 or * picks a free "
                                               "one) or ipc://PATH")
        if t == "address":
            host, sep, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
            ok = bool(sep and host) and port.isdigit() and int(port) <= 65535
            return (v, None) if ok else (None, "must be host:port (port 0..65535; 0 picks a free one)")
        return v, None  # "any"

    def _number(self, v: Any) -> tuple[Any, str | None]:
        if isinstance(v, str) and self.allow_inf and v.strip().lower() in ("inf", "infinity", ".inf"):
            v = math.inf
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, "must be a number"
        if math.isnan(v) or (math.isinf(v) and not self.allow_inf):
            return None, "must be finite"
        if v < self.minimum or (self.positive and v <= 0):
            return None, f"must be {'> 0' if self.positive else f'>= {self.minimum:g}'}"
        return float(v), None


_DC, _N, _E, _B, _C = "device_classes.<name>.", "nodes[].", "experts[].", "budget.", "coordinator."

SCHEMA: tuple[Key, ...] = (
    Key("name", "string", None, shown="the file name's stem",
        doc="The fleet's name: one deployment per name (`edge-moe down NAME`), Ray namespace `edge-moe-NAME`."),
    Key("device_classes", "mapping or file",
        doc="Device-class name → power profile (below), inline or the path of a YAML file that holds "
            "the mapping (relative to the fleet file), e.g. `device_classes.yaml`."),
    Key("nodes", "list", doc="The machines that serve experts (below); names unique."),
    Key("experts", "list", doc="The experts and where they run (below); names unique."),
    Key("categories", "list of strings",
        doc="The application categories (unique, non-empty) queries are classified into; budgets and "
            "profiles are per category."),
    Key("budget", "mapping", None, shown="no limit", doc="The default budget of a query (below)."),
    Key("coordinator", "mapping", doc="The gating coordinator (below)."),

    Key(_DC + "power_idle_w", "number", unit="W", doc="Power drawn idle."),
    Key(_DC + "power_busy_w", "number", unit="W", positive=True,
        doc="Power drawn busy; ≥ `power_idle_w`. Modelled energy is busy power × busy time."),
    Key(_DC + "source", "string", doc="Where the figures come from (a citation, or what was measured)."),
    Key(_DC + "throughput_factor", "number", 1.0, unit="×", positive=True,
        doc="Speed relative to this repository's reference CPU, for projected profiles."),
    Key(_DC + "throughput_source", "text", "", doc="Where `throughput_factor` comes from."),
    Key(_DC + "energy_counters", "list", (), choices=ENERGY_COUNTERS, shown="`[]`",
        doc="The energy counters this class can read (measured energy in place of modelled)."),
    Key(_DC + "notes", "any", None, shown="none", doc="Free text; ignored."),

    Key(_N + "name", "string", doc="Unique; also names the node's Ray resource `edge_moe_node:NAME`."),
    Key(_N + "device_class", "string", doc="A key of `device_classes`."),
    Key(_N + "host", "string", "127.0.0.1",
        doc="The node's address. The coordinator node's host replaces a wildcard host "
            "(`0.0.0.0`, `*`) of `coordinator.backend` in the address nodes connect to."),
    Key(_N + "ray_resource", "text", "", shown="`edge_moe_node:NAME`",
        doc="The custom Ray resource that pins this node's actor (`ray start --resources=...`)."),
    Key(_N + "num_gpus", "number", 0.0, unit="GPUs", doc="GPUs of the node (recorded; Ray is told by `ray start`)."),
    Key(_N + "max_batch", "integer", 8, unit="TASKs", minimum=1,
        doc="Dynamic batching: at most this many TASKs for one expert served together (1: one at a time)."),
    Key(_N + "batch_wait_ms", "number", 5.0, unit="ms", doc="How long a batch waits for more TASKs."),
    Key(_N + "stream_flush_ms", "number", 30.0, unit="ms",
        doc="A streamed generation's first piece of text goes to the coordinator at once; later "
            "pieces at most once per this many ms, joined (0: one PARTIAL per token). Each PARTIAL "
            "wakes the node, the coordinator and the HTTP front, which share the engine's cores."),
    Key(_N + "threads", "integer", None, unit="threads", minimum=1, nullable=True,
        shown="the host's cores",
        doc="onnxruntime intra-op threads of each of the node's runners; `null`: the cores of the "
            "node's host. Honoured by `deploy`, `calibrate --fleet` and `profile --config` (the served nodes), so "
            "profiles are measured as served."),
    Key(_N + "spin", "integer", None, unit="spins", minimum=0, nullable=True, shown="300 alone, 0 shared",
        doc="How long each llama.cpp thread of the node's `llama.cpp` experts polls at ggml's "
            "barrier before it sleeps (libgomp's `GOMP_SPINCOUNT`). Polling makes decode fast "
            "while the node has its cores to itself (SmolLM2 Q4_1, 2 threads, quiet: 0 gives 50 "
            "tok/s, 100 gives 96, 300 gives 131) and costs when other processes share them (one "
            "core busy: 57, 55, 44 tok/s); `null`: 300 when no other node with experts has this "
            "node's `host`, 0 when one does. An `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` "
            "in the node's environment wins."),
    Key(_N + "prefix_reuse", "choice", "exact", choices=PREFIX_REUSE,
        doc="The node's `llama.cpp` experts keep the last request's tokens in their KV cache, and a "
            "new prompt computes only what follows the part it shares with them (a conversation's "
            "earlier turns, a retried prompt, a shared system prompt). `exact`: whole 128-token "
            "chunks of an earlier prompt only, so every reply is bit for bit a fresh context's; "
            "`tokens`: every shared token, as llama.cpp's own prompt cache, faster on short "
            "shared prefixes, but a reply then depends on the request before it (llama.cpp's "
            "batch rounding); `off`: every prompt whole. No memory cost (the cache is "
            "allocated for the context anyway)."),
    Key(_N + "context", "integer", None, unit="tokens", minimum=16, nullable=True, shown="4096",
        doc="The most tokens (prompt + generated) one request to the node's `llama.cpp` experts may "
            "use: their KV cache's cap, at most the model's training context; a longer request gets "
            "an error naming both. The cache starts at 512 tokens and grows to the next power of two "
            "a request needs, so memory follows the longest request served (SmolLM2-135M: 23 kB "
            "per token; 4,096 tokens hold 94 MB); this bounds it. `null`: 4,096."),
    Key(_N + "llama_cpp_batch", "choice", "off", choices=LLAMA_CPP_BATCH,
        doc="Batched generation for the node's `llama.cpp` experts. `off`: one sequence at a time. "
            "`exact`: up to `max_batch` sequences decode together through llama.cpp's multi-sequence "
            "batch, each reply bit for bit what it gets alone (every sequence its own KV stream, "
            "attention without flash attention): more tokens per second under concurrent load, a lone "
            "request slower (no flash attention: decode ~15% slower here) and the KV cache held "
            "`max_batch` times. Measured: docs/howto/tuning.md."),
    Key(_N + "prepack", "bool", True,
        doc="onnxruntime weight prepacking on the node's CPU runners: faster matrix products, a "
            "second (packed) copy of the MatMul weights in memory."),

    Key(_E + "name", "string",
        doc="Unique; the name the gate, the calibration table and the profiles use."),
    Key(_E + "node", "string", doc="The `nodes[].name` that serves it."),
    Key(_E + "artifact", "text", "",
        doc="The artifact: an ONNX folder with its `manifest.json`, or for `tensorrt` a built engine "
            "(a file, or a folder with `model.engine`). Relative paths start at `--artifacts` "
            "(default `$EDGE_MOE_CACHE/artifacts`). Deploy needs one."),
    Key(_E + "runner", "choice", "onnxruntime", choices=RUNNER_NAMES,
        doc="The engine that runs it (`edge_moe.runtime.runners.RUNNERS`); `llama.cpp` serves a `.gguf` "
            "file as the artifact, with no export (the `gguf` extra)."),
    Key(_E + "precision", "choice", "fp32", choices=PRECISIONS,
        doc="The artifact's precision; must equal its manifest's (`check-config --deep`)."),

    Key(_B + "energy_j", "number", math.inf, unit="J", allow_inf=True, doc="Energy per query."),
    Key(_B + "latency_ms", "number or mapping", math.inf, unit="ms",
        doc="Latency per query: one number (≥ 0 or `inf`), or a mapping with one per category (every category)."),

    Key(_C + "node", "string", doc="The `nodes[].name` whose machine runs the coordinator."),
    Key(_C + "frontend", "endpoint", "tcp://127.0.0.1:5555", doc="Where clients send QUERYs (bound)."),
    Key(_C + "backend", "endpoint", "tcp://127.0.0.1:5556",
        doc="Where nodes connect (bound). A non-loopback frontend or backend needs `curve: true`."),
    Key(_C + "heartbeat_s", "number", 1.0, unit="s", positive=True,
        doc="Coordinator and nodes each send a HEARTBEAT this often (Paranoid Pirate)."),
    Key(_C + "liveness", "integer", 3, unit="heartbeats", minimum=1,
        doc="A peer is dead after this many heartbeat intervals with nothing from it."),
    Key(_C + "reconnect_min_s", "number", 0.5, unit="s", positive=True,
        doc="A node's first reconnect back-off; it doubles up to `reconnect_max_s`."),
    Key(_C + "reconnect_max_s", "number", 8.0, unit="s", positive=True,
        doc="The longest reconnect back-off; ≥ `reconnect_min_s`."),
    Key(_C + "top_k", "integer", 2, unit="experts", minimum=1, nullable=True,
        doc="The answer aggregates at most this many of the planned experts (highest gate weight); "
            "`null`: all of them. At most the number of experts (`check-config --deep`)."),
    Key(_C + "curve", "bool", False,
        doc="CurveZMQ encryption and authentication (`edge-moe keys`; deploy `--curve-keys`)."),
    Key(_C + "max_prompt_bytes", "integer", 65536, unit="bytes", minimum=1,
        doc="A longer prompt (UTF-8) is refused with ERROR `bad_request` before it is embedded."),
    Key(_C + "quarantine_after", "integer", 3, unit="RESULTs", minimum=1,
        doc="This many bad RESULTs from one node within `quarantine_s` take it out of the plans ..."),
    Key(_C + "quarantine_s", "number", 30.0, unit="s", positive=True, doc="... for this long."),
    Key(_C + "load_aware", "bool", True,
        doc="Plan against each expert's predicted completion time (queue wait + profile); ERROR "
            "`overloaded` when only load keeps a budget from being met."),
    Key(_C + "max_pending", "integer", 1024, unit="queries", minimum=1,
        doc="Queries in flight; past it a query is answered ERROR `overloaded` at once."),
    Key(_C + "max_waiting", "integer", 256, unit="queries", minimum=1,
        doc="Queries waiting for the embedding worker; past it ERROR `overloaded` at once."),
    Key(_C + "http", "address", None, nullable=True,
        doc="Also serve the OpenAI-compatible HTTP front here (`edge-moe deploy`); `null`: no front. "
            "A non-loopback host needs `http_api_keys`."),
    Key(_C + "http_api_keys", "string", None, nullable=True,
        doc="A file of API keys (one per line) the HTTP front requires."),
    Key(_C + "metrics", "address", None, nullable=True,
        doc="Also serve the coordinator's Prometheus metrics at `http://<this>/metrics` (a port of its "
            "own: a ZeroMQ-only fleet is observable); `null`: only through the HTTP front."),
    Key(_C + "objective", "choice", "loglik", choices=OBJECTIVES,
        doc="The F(S) the coordinator plans with online: mean log p(label) (`loglik`) or `accuracy`."),
)

# section path → (heading, what it is)
SECTIONS: dict[str, tuple[str, str]] = {
    "": ("Top level", "A fleet file is one mapping with these keys."),
    "device_classes.<name>": (
        "`device_classes`", "Each device class maps its name to a power profile. Shared classes, each "
        "with a cited source, are in `configs/device_classes.yaml`."),
    "nodes[]": ("`nodes[]`", "One entry per machine that serves experts. Deploy starts a node server on "
                "each, and one that hosts no experts refuses to start."),
    "experts[]": ("`experts[]`", "One entry per expert; an expert runs on one node."),
    "budget": ("`budget`", "The default budget of a query; a query or `edge-moe plan` may give its own."),
    "coordinator": ("`coordinator`", "The coordinator's endpoints, liveness and limits."),
}

MINIMAL_EXAMPLE = """\
name: tiny
device_classes: device_classes.yaml   # or inline: {cpu: {power_idle_w: 5, power_busy_w: 15, source: ...}}
nodes:
  - {name: cpu-a, device_class: cpu}
experts:
  - {name: smollm2-135m, node: cpu-a, artifact: smollm2-135m-instruct/fp32}
categories: [stem, humanities, social_sciences, other]
coordinator: {node: cpu-a}
"""


def keys_of(section: str) -> dict[str, Key]:
    """The keys of one section (``""``, ``"nodes[]"``, ...), by name, in table order."""
    return {k.name: k for k in SCHEMA if k.section == section}


def _shown(k: Key) -> str:
    if k.shown:
        return k.shown
    if k.required:
        return "**required**"
    v = k.default
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, float):
        return f"`{v:g}`"
    return f'`"{v}"`' if v == "" else f"`{v}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_markdown() -> str:
    """The fleet-YAML reference (``docs/reference/fleet-yaml.md``), rendered from :data:`SCHEMA`."""
    out = [
        "# Fleet YAML reference", "",
        "<!-- Generated from edge_moe/config_schema.py (SCHEMA); do not edit. Regenerate:",
        "     .venv/bin/python -c 'from edge_moe.config import schema_markdown as m; "
        "print(m(), end=\"\")' > docs/reference/fleet-yaml.md -->", "",
        "A fleet file names the device classes, the nodes, the experts on them, the categories, "
        "the default budget and the coordinator. `edge-moe check-config FILE` lists every problem "
        "in a file at once (file, key path, value, rule); `--deep` adds what would stop a deploy "
        "from this machine (missing artifacts or engines, a manifest that disagrees, addresses that "
        "cannot be bound, `top_k` above the number of experts, a node without experts, and with "
        "`--gate/--calibration/--profiles` inputs made for other experts). Unknown keys are errors.",
        "", "A minimal fleet:", "", "```yaml", MINIMAL_EXAMPLE.rstrip("\n"), "```", "",
        "Full examples: `configs/fleet.local.yaml`, `configs/fleet.example.yaml`, `configs/fleet.demo.yaml`.",
    ]
    for section, (heading, intro) in SECTIONS.items():
        out += ["", f"## {heading}", "", intro, "",
                "| key | type and rule | default | unit | meaning |", "|---|---|---|---|---|"]
        for k in keys_of(section).values():
            out.append(f"| `{k.name}` | {_cell(k.rule())} | {_cell(_shown(k))} | {k.unit} | {_cell(k.doc)} |")
    return "\n".join(out) + "\n"
