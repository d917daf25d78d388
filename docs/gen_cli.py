"""Write docs/reference/cli.md from the Typer app (``edge_moe.cli.app``): every command's help,
usage, arguments and options with their types and defaults, as ``--help`` shows them.

    .venv/bin/python docs/gen_cli.py            # rewrite docs/reference/cli.md
    .venv/bin/python docs/gen_cli.py --check    # exit 1 when the committed file is stale

``tests/unit/test_docs.py`` holds the committed file equal to :func:`render`. Defaults that
depend on the machine are written portably: the repository's own path is dropped (paths are
relative to the repository), ``$EDGE_MOE_CACHE`` and ``~`` stand for the cache and home.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "reference" / "cli.md"

HEADER = """# Command-line reference

<!-- Generated from the Typer app (edge_moe.cli.app) by docs/gen_cli.py; do not edit. Regenerate:
     .venv/bin/python docs/gen_cli.py -->

Every `edge-moe` command with its arguments and options, as `edge-moe COMMAND --help` prints
them; the exit codes are the same for every command (below, and `edge_moe/cli/common.py`).
An expected failure prints one line `ClassName: message` on stderr, never a traceback. The
fleet file's keys are in [fleet-yaml.md](fleet-yaml.md).
"""


def _portable(text: str) -> str:
    """Machine paths in a help text or default, written the same on every machine."""
    from edge_moe.paths import cache_dir

    out = text.replace(str(cache_dir()), "$EDGE_MOE_CACHE")
    out = out.replace(str(REPO) + os.sep, "").replace(str(REPO), ".")
    return out.replace(str(Path.home()), "~")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes and angle brackets escaped."""
    text = " ".join(text.split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _para(text: str) -> str:
    """A command's docstring as Markdown paragraphs (Click's ``\\b`` markers dropped)."""
    lines = [ln for ln in inspect.cleandoc(text).splitlines() if ln.strip() != "\b"]
    return "\n".join(lines).replace("<", "&lt;").replace(">", "&gt;")


_DECL = re.compile(r"^(?P<names>-[-\w]+(?:(?:, | / )-[-\w]+)*)(?: (?P<meta>.+))?$")
_BRACKET = re.compile(r"\s*\[(?P<extra>[^\[\]]*)\]\s*$")


def _split_help(help_text: str) -> tuple[str, str, list[str]]:
    """(description, default, notes) from a help record's text: Click appends
    ``  [default: X; x>=0; required]`` to the description."""
    m = _BRACKET.search(help_text)
    if not m or not any(k in m.group("extra") for k in ("default:", "required", "x>", "x<", "<=x", "<x")):
        return help_text, "", []
    default, notes = "", []
    for part in (p.strip() for p in m.group("extra").split(";")):
        if part.startswith("default: "):
            default = part[len("default: "):]
        elif part:
            notes.append(part)
    return help_text[: m.start()], default, notes


def _option_row(param: Any, ctx: Any) -> str:
    record = param.get_help_record(ctx)
    if record is None:
        return ""
    decl, help_text = record
    m = _DECL.match(decl)
    decl, meta = (m.group("names"), m.group("meta") or "") if m else (decl, "")
    kind = "count" if getattr(param, "count", False) else "flag" if not meta else meta.strip("<>")
    desc, default, notes = _split_help(_portable(help_text))
    if notes:
        desc = f"{desc} ({'; '.join(notes)})" if desc else "; ".join(notes)
    opts = ", ".join(f"`{d.strip()}`" for d in decl.replace(" / ", ", ").split(", "))
    return f"| {opts} | {_cell(kind)} | {_cell(default) if default else ''} | {_cell(desc)} |"


def _argument_row(param: Any) -> str:
    kind = getattr(param.type, "name", "text") if hasattr(param, "type") else "text"
    name = param.name.upper()
    desc = _portable(getattr(param, "help", None) or "")
    req = "required" if param.required else "optional"
    if getattr(param, "nargs", 1) == -1:
        name += "..."
    return f"| `{name}` | {_cell(str(kind))} | {req} | {_cell(desc)} |"


def _command(path: list[str], cmd: Any, ctx_cls: Any, out: list[str]) -> None:
    name = " ".join(path)
    ctx = ctx_cls(cmd, info_name=name)
    sub = getattr(cmd, "commands", None)
    out += [f"## `{name}`", ""]
    if cmd.help:
        out += [_para(_portable(cmd.help)), ""]
    usage = cmd.get_usage(ctx).replace("Usage: ", "", 1)
    out += ["```", _portable(usage), "```", ""]
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    if args:
        out += ["| argument | type | | description |", "|---|---|---|---|"]
        out += [_argument_row(p) for p in args]
        out.append("")
    rows = [r for r in (_option_row(p, ctx) for p in opts) if r]
    if rows:
        out += ["| option | type | default | description |", "|---|---|---|---|", *rows, ""]
    if sub:
        out += ["Subcommands: " + ", ".join(f"`{name} {s}`" for s in sorted(sub)), ""]
        for s in sorted(sub):
            _command([*path, s], sub[s], ctx_cls, out)


def render() -> str:
    """The whole of docs/reference/cli.md."""
    import typer.main

    from edge_moe.cli import app

    group = typer.main.get_command(app)
    ctx_cls = type(group.make_context("edge-moe", ["--help"], resilient_parsing=True))
    out = [HEADER]
    out += ["Commands: " + ", ".join(f"[`{c}`](#edge-moe-{c})" for c in sorted(group.commands)), ""]
    _command(["edge-moe"], group, ctx_cls, out)
    text = "\n".join(out).rstrip("\n") + "\n"
    return re.sub(r"\n{3,}", "\n\n", text)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = not OUT.exists() or OUT.read_text() != text
        if stale:
            print(f"{OUT.relative_to(REPO)} is stale: run .venv/bin/python docs/gen_cli.py", file=sys.stderr)
        return 1 if stale else 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv[1:]))
