"""Runs examples/corpus_report/main.py as a subprocess: on a small generated tree with bad
files (exact counts, pages, report, cache hits on the second run, plain progress lines, and
a progress bar when stderr is a terminal), with a missing root, and once on the real
standard library."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "examples" / "corpus_report" / "main.py"

# 6 functions (methods, an async one and a nested one), 2 classes, 2 with docstrings
# (Shape, Circle.area), 2 comments (the "#" inside a string is not one), longest: longest().
SHAPES = textwrap.dedent('''\
    """Shapes."""

    # A comment line
    import math


    class Shape:
        """A shape."""

        def area(self):  # an inline comment
            raise NotImplementedError


    class Circle(Shape):
        def __init__(self, r):
            self.r = r

        def area(self):
            """Area."""
            return math.pi * self.r ** 2


    async def fetch():
        def helper():
            return 1

        return helper()


    def longest(x):
        total = 0
        for i in range(x):
            total += i
        text = "# not a comment"
        return total
    ''')
# Over --max-bytes: streamed for tokens only. The string holds "def" and "class" that a
# text search would count; the tokenizer does not.
BIG = 'TRAP = "def not_a_function(): class NotAClass"\n' + "".join(
    f"def f_{i}():\n    return {i}\n\n" for i in range(200)
) + "class Big:\n    pass\n"
MAX_BYTES = 4096


def report_env() -> dict[str, str]:
    """This environment with this checkout's kaygraph first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    """Run main.py with this interpreter and this checkout's kaygraph; return the result."""
    return subprocess.run(
        [sys.executable, str(MAIN), *args],
        capture_output=True, text=True, timeout=170, env=report_env(), cwd=ROOT,
    )


def run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run main.py with stderr on a pseudo-terminal (100 columns) and stdout on a pipe;
    return the exit status, stdout and what the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, str(MAIN), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=report_env(), cwd=ROOT)
    os.close(slave)
    shown = bytearray()
    try:
        while True:  # read the terminal until the run ends and nothing is left to read
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            shown += data
        out = proc.stdout.read().decode() if proc.stdout else ""
        return proc.wait(timeout=170), out, shown.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
        os.close(master)


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The summary lines on stdout as {first word: rest of the line}."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("corpus_report: "), proc.stdout
    return dict(line.strip().split(None, 1) for line in lines[1:])


def make_tree(top: Path) -> int:
    """Write the small tree; return how many files are unreadable (0 or 1 beyond the symlink)."""
    (top / "pkg").mkdir(parents=True)
    (top / "pkg" / "__init__.py").write_text("")
    (top / "pkg" / "shapes.py").write_text(SHAPES)
    # Not UTF-8, but valid: the PEP 263 cookie says Latin-1.
    (top / "pkg" / "latin.py").write_bytes(
        b"# -*- coding: latin-1 -*-\nname = '\xe9t\xe9'\n\ndef f():\n    return name\n"
    )
    (top / "bad_utf8.py").write_bytes(b"name = '\xff\xfe'\n")  # caught on the first line
    (top / "late_bad_utf8.py").write_bytes(b"a = 1\nb = 2\nc = '\xff'\n")  # while streaming
    (top / "broken.py").write_text("def f(:\n    pass\n")
    (top / "big.py").write_text(BIG)
    (top / "dangling.py").symlink_to(top / "no_such_file.py")  # unreadable even for root
    for ignored in ("__pycache__/cached.py", ".hidden/x.py", "site-packages/y.py"):
        (top / ignored).parent.mkdir()
        (top / ignored).write_text("def ignored():\n    pass\n")
    (top / "notes.txt").write_text("def not_python(): pass\n")
    locked = top / "locked.py"
    locked.write_text("x = 1\n")
    locked.chmod(0)
    try:
        locked.read_bytes()
    except PermissionError:
        return 1
    locked.unlink()  # running as root: chmod can't make a file unreadable, so drop it
    return 0


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory):
    """Two runs on the small tree with the same --out: (first, second, out dir, locked)."""
    tmp = tmp_path_factory.mktemp("corpus")
    locked = make_tree(tmp / "tree")
    args = ("--root", str(tmp / "tree"), "--out", str(tmp / "out"), "--workers", "2",
            "--page-size", "2", "--max-bytes", str(MAX_BYTES))
    first = run_report(*args)
    second = run_report(*args)
    return first, second, tmp / "out", locked


def test_small_tree_counts_are_exact_and_bad_files_are_counted_skips(small_runs) -> None:
    first, _, _, locked = small_runs
    s = summary(first)
    unreadable = 1 + locked
    assert s["files"] == (
        f"4 analysed (3 parsed, 1 streamed over {MAX_BYTES:,} bytes), {4 + locked} skipped "
        f"(encoding 2, syntax 1, unreadable {unreadable})"
    )
    lines = len(SHAPES.splitlines()) + 5 + len(BIG.splitlines())
    blank = sum(not x.strip() for x in SHAPES.splitlines() + BIG.splitlines()) + 1
    # Comments: 2 in shapes.py, the coding cookie in latin.py.
    assert s["lines"] == f"{lines:,} ({blank:,} blank, 3 comments)"
    # 6 + 1 + 200 functions, 2 + 1 classes; docstrings on 2 of the 9 defs of parsed files.
    assert s["defs"] == "207 functions, 3 classes, docstrings on 22.2%"
    # Every file that reached the analysing nodes was looked up once; an unreadable one
    # (locked.py, unless running as root) too, under its path.
    assert s["cache"] == f"0 hits, {7 + locked} misses"
    # The page loop shows in the progress: 6 files to parse (the bad ones too) in pages of 2,
    # then the big one.
    assert "analyse: page 3, 6/7 files" in first.stderr
    assert "stream_big: page 4, 7/7 files" in first.stderr
    # stderr is a pipe here: plain lines, one per step, and no bar.
    assert "\r" not in first.stderr and "%|" not in first.stderr and "file/s" not in first.stderr
    steps = [line.split(":")[0] for line in first.stderr.splitlines()]
    assert steps[0] == "scan" and steps[-3:] == ["count_skips", "aggregate", "report"]
    assert set(steps[1:-3]) == {"analyse", "stream_big"}, first.stderr


def test_small_tree_pages_and_report(small_runs) -> None:
    _, _, out, _ = small_runs
    pages = sorted((out / "pages").glob("page-*.json"))
    assert [p.name for p in pages] == [f"page-000{i}.json" for i in (1, 2, 3, 4)]
    files = {}
    for page in pages:
        files.update({f["path"]: f for f in json.loads(page.read_text())["files"]})
    assert sorted(files) == ["big.py", "pkg/__init__.py", "pkg/latin.py", "pkg/shapes.py"]
    shapes = files["pkg/shapes.py"]
    assert (shapes["functions"], shapes["classes"], shapes["documented"]) == (6, 2, 2)
    assert shapes["comments"] == 2 and shapes["module_doc"] is True
    assert shapes["longest"] == {"name": "longest", "line": 30, "length": 6}
    assert next(iter(shapes["identifiers"].items())) == ("self", 5)
    big = files["big.py"]
    assert (big["functions"], big["classes"], big["documented"], big["longest"]) == (
        200, 1, None, None)
    assert files["pkg/latin.py"]["identifiers"] == {"name": 2, "f": 1}

    report = (out / "report.md").read_text()
    longest = report.split("## Longest functions (each file's longest)", 1)[1]
    assert "| 1 | longest | pkg/shapes.py:30 | 6 |\n| 2 | f | pkg/latin.py:4 | 2 |\n" in longest
    assert "| 1 | big.py | 200 | 1 |" in report  # most functions and classes
    assert "| broken.py | syntax |" in report and "| bad_utf8.py | encoding |" in report
    assert "| late_bad_utf8.py | encoding | not valid utf-8: line 3 |" in report
    assert "| dangling.py | unreadable |" in report
    assert re.search(r"Slowest node: \*\*\w+\*\*", report)
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["path"] for s in skipped) == sorted(
        ["bad_utf8.py", "broken.py", "dangling.py", "late_bad_utf8.py"]
        + ["locked.py"] * small_runs[3])


def test_second_run_is_all_cache_hits(small_runs) -> None:
    first, second, _, locked = small_runs
    # Every file hits, the bad ones too (a skip is cached like facts).
    assert summary(second)["cache"] == f"{7 + locked} hits, 0 misses"
    for key in ("files", "lines", "defs"):
        assert summary(second)[key] == summary(first)[key]


def test_a_terminal_gets_a_progress_bar_of_files_from_the_events(tmp_path: Path) -> None:
    pytest.importorskip(
        "tqdm", reason='needs tqdm, the `examples` extra: pip install -e ".[examples]"')
    locked = make_tree(tmp_path / "tree")
    status, out, shown = run_on_a_terminal(
        "--root", str(tmp_path / "tree"), "--out", str(tmp_path / "out"), "--workers", "2",
        "--page-size", "2", "--max-bytes", str(MAX_BYTES))
    assert status == 0, out + shown
    total = 7 + locked
    assert f"cache     0 hits, {total} misses" in out and "files: " not in out  # no bar
    # The bar ends full, with the counts of the last page, before the steps after it.
    final = re.search(rf"files: 100%\|[^|\r\n]*\| {total}/{total} \[[^]]*, 0 hits, "
                      rf"{total} misses, {4 + locked} skipped\]", shown)
    assert final, shown
    assert shown.index("scan: done in") < final.start() < shown.index("aggregate: done in")
    assert re.search(rf"files:  *\d+%\|[^|]*\| [1-6]/{total} ", shown), shown  # it moved
    assert "analyse: page" not in shown and "stream_big: page" not in shown
    assert "Traceback" not in shown and "Warning" not in shown, shown


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_report("--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"--root '{tmp_path / 'nope'}': no such directory" in proc.stderr
    assert proc.stdout == ""


def test_stdlib_report(tmp_path: Path) -> None:
    """The README's main job: the real standard library, run once."""
    proc = run_report("--out", str(tmp_path))
    s = summary(proc)
    analysed = int(s["files"].split()[0].replace(",", ""))
    assert analysed > 1000, s
    misses = int(re.match(r"[\d,]+ hits, ([\d,]+) misses", s["cache"])[1].replace(",", ""))
    assert misses > 1000  # a fresh --out: (nearly) everything is parsed; equal files hit
    assert re.match(r"[\d,]+ functions, [\d,]+ classes, docstrings on \d+\.\d%", s["defs"])
    report = (tmp_path / "report.md").read_text()
    largest = report.split("## Largest files", 1)[1].split("##", 1)[0]
    assert len(re.findall(r"^\| \d+ \|", largest, re.M)) == 20
    assert "## Most common identifiers" in report and "| 1 | self |" in report
