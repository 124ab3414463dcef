"""Typed nodes: mypy --strict checks user nodes written as Node[PrepRes, ExecRes].

Runs mypy once on examples/hello, on the docs blocks that start with
"# checked by mypy --strict", and on a deliberately wrong node, which must be reported.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kaygraph import BatchNode, Node

ROOT = Path(__file__).resolve().parent.parent
MARK = "# checked by mypy --strict"

WRONG = '''
from typing import Any

from kaygraph import BatchNode, Node


class Wrong(Node[str, int]):
    def prep(self, shared: dict[str, Any]) -> str:
        return "text"

    def exec(self, prep_res: str) -> int:
        return prep_res  # a str where the node promises an int


class WrongItems(BatchNode[str, int]):
    def exec(self, item: int) -> int:  # the items are str
        return item
'''


def typed_doc_blocks():
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            if block.startswith(MARK):
                yield page.name, block


def test_node_classes_are_subscriptable_and_unchanged_at_run_time():
    class Typed(Node[str, int]):
        def exec(self, prep_res):
            return 3

    class Items(BatchNode[str, int]):
        def prep(self, shared):
            return ["a", "bb"]

        def exec(self, item):
            return len(item)

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    Items().run(shared)
    assert shared["out"] == [1, 2] and Typed().run({}) is None


def test_mypy_strict_checks_typed_nodes(tmp_path):
    pytest.importorskip("mypy", reason='needs mypy, the `dev` extra: pip install -e ".[dev]"')
    blocks = list(typed_doc_blocks())
    assert any(name == "concepts.md" for name, _ in blocks)
    files = [ROOT / "examples" / "hello" / "main.py"]
    for i, (name, code) in enumerate(blocks):
        files.append(tmp_path / f"doc_{i}_{name.replace('.', '_').replace('-', '_')}.py")
        files[-1].write_text(code)
    wrong = tmp_path / "wrong.py"
    wrong.write_text(textwrap.dedent(WRONG))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-version",
         "3.10", "--cache-dir", str(tmp_path / "cache"), *map(str, files), str(wrong)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "MYPYPATH": str(ROOT)})  # this checkout's kaygraph
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith("wrong.py:") for line in errors), proc.stdout
    assert any("Incompatible return value type (got \"str\", expected \"int\")" in line
               for line in errors), proc.stdout
    assert any("incompatible with supertype" in line for line in errors), proc.stdout
    assert len(errors) == 2, proc.stdout
