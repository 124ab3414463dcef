"""The docs cannot rot: their code runs, their links resolve, and api.md is current.

Conventions for every ```python block in docs/*.md and README.md:
- The blocks of one page run in order, in one namespace, in a fresh subprocess whose working
  directory is an empty temp dir (so a block may write files).
- A top-level `print(...)  # TEXT` line promises that TEXT is a line of the output; the promised
  lines must appear in that order. A comment starting with "e.g." is an illustration, not checked.
- Blocks run with UserWarning as an error: a graph that warns (an action with no successor)
  is a bug in the example.
- `<!-- output -->` on the line just before a ```text fence that directly follows a python
  block: every non-blank line of it is promised output of that block, in order.
- `<!-- not-run: REASON -->` on the line just before the fence: the block is only compiled,
  never run. The reason is required.
- `<!-- requires: MODULE -->` on the line just before the fence: the block runs on its own, in a
  fresh namespace, when MODULE can be imported, and is reported as skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
PYTHON_LANGS = {"python", "py", "python3"}
MARKER = re.compile(r"^<!--\s*(not-run|requires|output)\b\s*:?(.*?)-->\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")


@dataclass
class Block:
    path: str  # relative to the repo root, for messages and tracebacks
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str = ""  # "", "not-run", "requires" or "output"
    arg: str = ""  # the reason, or the module
    output: list[str] = field(default_factory=list)  # lines of a following output block


def parse(text: str, path: str) -> tuple[list[Block], list[str]]:
    """Return the fenced code blocks of a Markdown text, and the problems with its markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        marker = MARKER.match(lines[i].strip())
        if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            problems.append(f"{path}:{i + 1}: marker not on the line just before a fence")
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].lstrip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        above = MARKER.match(lines[start - 1].strip()) if start else None
        if above and above.group(1) == "output":
            block.marker = "output"
            prev = blocks[-1] if blocks else None
            if prev is None or prev.lang not in PYTHON_LANGS or prev.marker:
                problems.append(f"{path}:{start}: `output` block not after a runnable python block")
            elif lang in PYTHON_LANGS:
                problems.append(f"{path}:{start}: an `output` block must not be ```python")
            else:
                prev.output = [line.strip() for line in body if line.strip()]
        elif above:
            block.marker, block.arg = above.group(1), above.group(2).strip()
            if not block.arg:
                what = "a reason" if block.marker == "not-run" else "a module name"
                problems.append(f"{path}:{start}: `{block.marker}` marker without {what}")
            if lang not in PYTHON_LANGS:
                problems.append(f"{path}:{start}: marker on a block that is not ```python")
        blocks.append(block)
    return blocks, problems


def python_blocks(page: Path) -> list[Block]:
    rel = page.relative_to(ROOT).as_posix()
    blocks, _ = parse(page.read_text(encoding="utf-8"), rel)
    return [b for b in blocks if b.lang in PYTHON_LANGS]


def promised_output(block: Block) -> list[str]:
    """The TEXT of each top-level one-line `print(...)  # TEXT` in the block, in order, then
    the lines of the `output` block that follows it."""
    out = []
    for line in block.code.splitlines():
        if not line.startswith("print("):
            continue
        try:
            tokens = list(tokenize.generate_tokens(StringIO(line + "\n").readline))
        except (tokenize.TokenError, SyntaxError):
            continue  # a print spanning several lines: nothing promised
        comments = [t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT]
        if comments and not comments[0].startswith("e.g."):
            out.append(comments[0])
    return out + block.output


RUNNER = r"""
import json as _json, sys as _sys
# Run in __main__ itself so classes defined by a block pickle (process pools).
for _b in _json.load(_sys.stdin):
    # Leading newlines make tracebacks show the line numbers of the Markdown file.
    exec(compile("\n" * _b["line"] + _b["code"], _b["path"], "exec"), globals())
"""


def run_blocks(blocks: list[Block], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    payload = json.dumps([{"path": b.path, "line": b.line, "code": b.code} for b in blocks])
    return subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", RUNNER],
        input=payload,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def check_run(blocks: list[Block], cwd: Path) -> None:
    proc = run_blocks(blocks, cwd)
    where = ", ".join(f"{b.path}:{b.line}" for b in blocks)
    assert proc.returncode == 0, f"a code block failed (blocks at {where}):\n{proc.stderr[-4000:]}"
    printed = proc.stdout.splitlines()
    pos = 0
    for block in blocks:
        for want in promised_output(block):
            while pos < len(printed) and printed[pos].strip() != want:
                pos += 1
            assert pos < len(printed), (
                f"{block.path}: a block at line {block.line} promises the output line\n  {want}\n"
                f"which was not printed (in order). The page printed:\n{proc.stdout[-3000:]}"
            )
            pos += 1


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_markers_are_well_formed(page: Path) -> None:
    _, problems = parse(page.read_text(encoding="utf-8"), page_id(page))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_page_code_runs(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    for b in blocks:  # not-run blocks must still be valid Python
        compile(b.code, f"{b.path}:{b.line}", "exec")
    runnable = [b for b in blocks if not b.marker]
    if not runnable:
        pytest.skip(f"{page_id(page)} has no runnable Python block")
    check_run(runnable, tmp_path)


OPTIONAL = [
    (p, b) for p in PAGES for b in python_blocks(p) if b.marker == "requires" and b.arg
]


@pytest.mark.parametrize(
    ("page", "block"), OPTIONAL, ids=[f"{b.path}:{b.line}" for _, b in OPTIONAL]
)
def test_optional_block_runs(page: Path, block: Block, tmp_path: Path) -> None:
    if importlib.util.find_spec(block.arg) is None:
        extra = extra_for(block.arg)
        how = f': pip install -e ".[{extra}]"' if extra else ""
        pytest.skip(f"{block.path}:{block.line} needs {block.arg}, which is not installed{how}")
    check_run([block], tmp_path)


def extra_for(module: str) -> str:
    """The first extra in pyproject.toml whose requirements name `module`, or ""."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = text.partition("[project.optional-dependencies]")[2].partition("\n[")[0]
    # A list may go on over several lines: it ends at the first "]" that ends a line.
    lists = re.findall(r"^([\w-]+) = \[(.*?)\]$", extras, re.MULTILINE | re.DOTALL)
    for name, requirements in lists:
        if re.search(rf'"{re.escape(module)}\b', requirements):
            return name
    return ""


def test_extra_for_finds_the_extra_that_installs_a_module() -> None:
    assert extra_for("langgraph") == "bench"
    assert extra_for("aiohttp") == "examples"
    assert extra_for("lang") == extra_for("json") == ""


def test_parse_rejects_bad_markers() -> None:
    text = "\n".join(
        [
            "<!-- not-run -->",
            "```python",
            "x = 1",
            "```",
            "<!-- not-run:   -->",
            "```python",
            "```",
            "<!-- not-run: talks to a real service -->",
            "",
            "```python",
            "```",
            "<!-- not-run: fine -->",
            "```python",
            "y = 2",
            "```",
            "<!-- output -->",
            "```text",
            "```",
            "```python",
            "print(3)",
            "```",
            "<!-- output -->",
            "```text",
            "  3",
            "",
            "```",
        ]
    )
    blocks, problems = parse(text, "x.md")
    markers = [b.marker for b in blocks]
    assert markers == ["not-run", "not-run", "", "not-run", "output", "", "output"]
    assert blocks[3].arg == "fine" and blocks[3].code == "y = 2\n"
    assert blocks[5].output == ["3"] and promised_output(blocks[5]) == ["3"]
    assert problems == [
        "x.md:1: `not-run` marker without a reason",
        "x.md:5: `not-run` marker without a reason",
        "x.md:8: marker not on the line just before a fence",
        "x.md:16: `output` block not after a runnable python block",
    ]


def test_promised_output_is_checked(tmp_path: Path) -> None:
    good = Block("x.md", 1, "python", "print(1 + 1)  # 2\nprint('a  # b')  # a  # b\n")
    check_run([good], tmp_path)
    bad = Block("x.md", 1, "python", "print(1 + 1)  # 3\n")
    with pytest.raises(AssertionError, match="promises the output line"):
        check_run([bad], tmp_path)
    failing = Block("x.md", 1, "python", "x = 1\n1 / 0\n")
    with pytest.raises(AssertionError, match=r"x\.md\", line 3"):
        check_run([failing], tmp_path)


# ---- links -----------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"""<a\s[^>]*(?:id|name)=["']([^"']+)["']""")


def outside_fences(text: str) -> list[str]:
    """The lines of a Markdown text, with those inside fenced code blocks blanked."""
    kept, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            kept.append("")
        elif fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            kept.append("")
        else:
            kept.append(line)
    return kept


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, without inline code spans."""
    return [re.sub(r"`[^`]*`", "", line) for line in outside_fences(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (what most static site generators also produce)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[`*~]|<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in outside_fences(page.read_text(encoding="utf-8")):
        h = HEADING.match(line)
        if h:
            base = slug(h.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ID.findall(line))
    return found


def broken_links(page: Path) -> list[str]:
    rel = page_id(page)
    problems = []
    for lineno, line in enumerate(prose(page.read_text(encoding="utf-8")), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto: are not checked (no network here)
            path_part, _, frag = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{rel}:{lineno}: ({target})"
            if ROOT not in dest.parents and dest != ROOT:
                problems.append(f"{where} points outside the repository")
            elif not dest.exists():
                problems.append(f"{where} does not exist")
            elif dest.is_dir() and dest.parent == ROOT / "examples":
                missing = [f for f in ("README.md", "main.py") if not (dest / f).exists()]
                if missing:
                    problems.append(f"{where} is a recipe without {', '.join(missing)}")
            if frag and dest.suffix == ".md" and dest.exists():
                if frag not in anchors(dest):
                    problems.append(f"{where} has no heading with anchor #{frag}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_resolve(page: Path) -> None:
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_finds_broken_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# The `Graph` class\n\n## Why? It's fast\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#the-graph-class) [ok](b.md#why-its-fast) [ok](#top) [web](https://x.org)\n"
        "# Top\n[gone](c.md) [bad](b.md#nope) [self](#nope) `[code](c.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "a.md:3: (c.md) does not exist",
        "a.md:3: (b.md#nope) has no heading with anchor #nope",
        "a.md:3: (#nope) has no heading with anchor #nope",
    ]


def test_every_page_is_reachable_from_the_index() -> None:
    index = "\n".join(prose((DOCS / "index.md").read_text(encoding="utf-8")))
    linked = {t.partition("#")[0] for t in LINK.findall(index)}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in linked]
    assert not missing, f"docs/index.md does not link to: {missing}"


# ---- api.md ----------------------------------------------------------------------------


def test_api_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec and spec.loader
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    assert current == gen_api.render(), (
        "docs/api.md is out of date with the docstrings: run `python docs/gen_api.py`"
    )
