"""The documents hold: the CLI reference is what its generator writes, every cited ``*.md``
exists in the repository, every ``edge-moe`` command line in the README and docs/ uses
options the command has, the multi-host walkthrough's fleet file is valid, and the README
stays short.

A *citation* is a Markdown link to a ``.md`` file, or a ``.md`` path written in any tracked
text file (``.py``, ``.md``, ``.toml``, ``.yaml``, ``.sh``, ``Makefile``): ``docs/design.md
§2``, ``DESIGN.md``. A path is resolved against the citing file's folder and the repository
root; it must exist inside the repository (``../shared/...`` does not). A bare name (no
folder) passes when a file of that name is anywhere in the repository; ``OUT.md`` and
``OUT/REPORT.md`` (also ``DIR``, ``PATH``, ``PREFIX``) are placeholders for a script's argument. Names of files that a
script *writes* or that live inside a third-party archive are not citations: they are listed
in :data:`NOT_CITATIONS`, each with its reason.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TEXT = re.compile(r"(\.(py|md|toml|yaml|yml|sh)|(^|/)Makefile)$")
MD_PATH = re.compile(r"(?<![\w./$<{*-])((?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)*\.md)\b(?![\w/])")
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(?:#[^)]*)?\)")

# (file, name): not a citation of a document, and why
NOT_CITATIONS = {
    ("tests/unit/exporters/test_bigbench.py", "bigbench-1.0.0/README.md"): "a member of a fake sdist",
    ("exporters/bigbench.py", "keywords_to_tasks.md"): "a file inside the bigbench sdist",
    ("benchmarks/freetext_mixture.py", "freetext_mixture.md"): "the file the script writes",
    ("benchmarks/load_bench.py", "quick.md"): "the file a quick run writes",
}
PLACEHOLDER = re.compile(r"^(OUT|DIR|PATH|PREFIX)(/|\.md$)")  # OUT.md, OUT/REPORT.md: named after an argument


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in sorted(set(out)) if TEXT.search(f) and (REPO / f).is_file()]


def _exists(name: str, src: Path) -> bool:
    """``name`` resolved against ``src``'s folder or the root is a file of the repository; a
    bare name (no folder: ``REPORT.md``, a script's output) passes when a file of that name
    is anywhere in it."""
    if "/" not in name and any(True for _ in REPO.glob(f"[!.]*/**/{name}")) | (REPO / name).is_file():
        return True
    for base in (src.parent, REPO):
        p = (base / name).resolve()
        if p.is_relative_to(REPO) and p.is_file():
            return True
    return False


def missing_citations(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    rel = path.relative_to(REPO).as_posix()
    # a Markdown link's text is what the reader sees, its target is the citation
    bare = re.sub(r"\[[^\]]*\]\(", "](", text) if path.suffix == ".md" else text
    names = set(MD_PATH.findall(bare)) | set(MD_LINK.findall(text))
    out = []
    for name in sorted(names):
        if "://" in name or (rel, name) in NOT_CITATIONS or name.startswith(".md") or PLACEHOLDER.match(name):
            continue
        if not _exists(name, path):
            line = next(i for i, ln in enumerate(text.splitlines(), 1) if name in ln)
            out.append(f"{rel}:{line}: cites {name}, which is not in the repository")
    return out


def test_no_file_cites_a_markdown_document_that_is_not_in_the_repository() -> None:
    me = Path(__file__).resolve()  # this file names missing documents on purpose, as probes
    problems = [p for f in tracked_text_files() if f.resolve() != me for p in missing_citations(f)]
    assert not problems, "\n".join(problems)


def test_the_citation_check_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: a missing name, a `../shared` path and a broken relative link are
    caught; existing names and links (relative to the file, or to the root) pass."""
    doc = REPO / "docs" / "_probe_test_docs.md"
    doc.write_text("see DESIGN.md §2, ../shared/notes/x.md, [p](protocol.md), [r](../README.md),\n"
                   "docs/design.md §2.4, [gone](howto/nowhere.md#x), `benchmarks/results/ortgenai.md`\n")
    try:
        found = missing_citations(doc)
    finally:
        doc.unlink()
    assert [f.split("cites ")[1].split(",")[0] for f in found] == \
        ["../shared/notes/x.md", "DESIGN.md", "howto/nowhere.md"], found


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces → '-'."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def test_every_anchor_in_the_docs_names_a_heading() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    anchors = {}
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        anchors[page.resolve()] = {_slug(ln.lstrip("#")) for ln in text.splitlines() if re.match(r"#{1,6} ", ln)}
    bad = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", page.read_text()):
            dest = (page.parent / target).resolve() if target else page.resolve()
            if dest in anchors and anchor not in anchors[dest]:
                bad.append(f"{page.relative_to(REPO)}: #{anchor} is not a heading of {target or 'this page'}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------- the CLI reference


def _gen_cli() -> Any:
    spec = importlib.util.spec_from_file_location("gen_cli", REPO / "docs" / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_cli_reference_is_what_the_generator_writes() -> None:
    committed = (REPO / "docs" / "reference" / "cli.md").read_text()
    assert committed == _gen_cli().render(), (
        "docs/reference/cli.md is stale; regenerate it: .venv/bin/python docs/gen_cli.py")


def _commands() -> dict[tuple[str, ...], set[str]]:
    """Every command path (``("deploy",)``, ``("assets", "fetch")``) → its option names, as
    ``--help`` shows them (a hidden, deprecated alias is not one the docs may use)."""
    import typer.main

    from edge_moe.cli import app

    out: dict[tuple[str, ...], set[str]] = {}

    def walk(path: tuple[str, ...], cmd: Any) -> None:
        out[path] = {o for p in cmd.params if not getattr(p, "hidden", False)  # deprecated aliases are hidden
                     for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("-")} | {"--help"}
        for name, sub in getattr(cmd, "commands", {}).items():
            walk((*path, name), sub)

    walk((), typer.main.get_command(app))
    return out


def _command_lines(text: str) -> list[str]:
    """``edge-moe ...`` command lines: in fenced code blocks (continuations joined) and in
    inline code spans."""
    lines, block = [], False
    for raw in text.replace("\\\n", " ").splitlines():
        if raw.lstrip().startswith("```"):
            block = not block
            continue
        if block:
            lines.append(raw)
    lines += re.findall(r"`((?:\.venv/bin/)?edge-moe [^`]+)`", text)
    return [ln for ln in lines if re.search(r"(^|[\s;(])(\.venv/bin/)?edge-moe\s", ln)]


def flag_problems(text: str, where: str, commands: dict[tuple[str, ...], set[str]]) -> list[str]:
    out = []
    for line in _command_lines(text):
        lexer = shlex.shlex(line.replace("[", " ").replace("]", " "), posix=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue  # an unbalanced quote in prose
        for i, tok in enumerate(tokens):
            if tok not in ("edge-moe", ".venv/bin/edge-moe"):
                continue
            rest = tokens[i + 1:]
            path: tuple[str, ...] = ()
            while rest and (*path, rest[0]) in commands:
                path, rest = (*path, rest[0]), rest[1:]
            root_opts = commands[()]
            while not path and rest and rest[0] in root_opts:  # edge-moe -v deploy ...
                rest = rest[1:]
                while rest and (*path, rest[0]) in commands:
                    path, rest = (*path, rest[0]), rest[1:]
            if not path:
                if rest and not rest[0].startswith("-") and rest[0] not in ("…", "..."):
                    out.append(f"{where}: `edge-moe {rest[0]}`: no such command ({line.strip()})")
                continue
            for tok2 in rest:
                if tok2 in ("|", "&&", ";", "||") or tok2 in ("edge-moe", ".venv/bin/edge-moe"):
                    break
                flag = tok2.split("=", 1)[0]
                if re.fullmatch(r"--?[a-zA-Z][\w-]*", flag) and flag not in commands[path] \
                        and flag not in root_opts:
                    out.append(f"{where}: `edge-moe {' '.join(path)}` has no option {flag} ({line.strip()})")
    return out


def test_every_command_line_in_the_docs_uses_real_options() -> None:
    commands = _commands()
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "examples").glob("*"))]
    problems = [p for f in docs if f.is_file() and f.name != "cli.md"
                for p in flag_problems(f.read_text(), f.relative_to(REPO).as_posix(), commands)]
    assert not problems, "\n".join(problems)


def test_the_option_check_sees_a_wrong_flag() -> None:
    text = "```bash\nedge-moe deploy configs/f.yaml --no-such-flag \\\n  --address x  # --also-not\n```\n" \
           "and `edge-moe nosuchcommand x`, `edge-moe status --json`\n"
    problems = flag_problems(text, "probe", _commands())
    assert len(problems) == 2 and "--no-such-flag" in problems[0] and "nosuchcommand" in problems[1], problems


# --------------------------------------------------------------------------- pages


def test_the_multihost_walkthroughs_fleet_is_committed_and_valid() -> None:
    from edge_moe.config import check_fleet

    fleet, errors = check_fleet(REPO / "configs" / "fleet.multihost.yaml")
    assert fleet is not None and not errors, errors
    page = (REPO / "docs" / "howto" / "multihost.md").read_text()
    assert "configs/fleet.multihost.yaml" in page
    assert fleet.coordinator.frontend in page and fleet.coordinator.curve
    for node in fleet.nodes:
        assert f'"edge_moe_node:{node.name}": 1' in page and node.host in page, node


@pytest.mark.parametrize("page", ["index.md", "design.md", "style.md", "protocol.md", "http.md",
                                  "results.md", "serving.md", "formats.md", "development.md",
                                  "howto/multihost.md", "howto/gpu-jetson.md", "howto/keys-tls.md",
                                  "howto/tuning.md", "howto/experts.md", "reference/cli.md",
                                  "reference/fleet-yaml.md"])
def test_every_page_is_linked_from_the_index(page: str) -> None:
    assert (REPO / "docs" / page).is_file()
    if page != "index.md":
        assert f"]({page})" in (REPO / "docs" / "index.md").read_text(), page


def test_the_readme_is_short_and_links_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "](docs/index.md)" in readme and "](docs/protocol.md)" in readme
