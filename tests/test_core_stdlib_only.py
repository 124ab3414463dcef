"""The core imports nothing outside the standard library."""

import ast
import subprocess
import sys
from pathlib import Path

import kaygraph

CORE = Path(kaygraph.__file__)


def imported_top_level_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the core is one file: no relative imports"
            yield node.module.partition(".")[0]


def test_core_is_one_file():
    assert CORE.name == "__init__.py"
    assert sorted(p.name for p in CORE.parent.glob("*.py")) == ["__init__.py"]


def test_core_imports_only_the_standard_library():
    tree = ast.parse(CORE.read_text(encoding="utf-8"))
    modules = set(imported_top_level_modules(tree))
    assert "asyncio" in modules  # the walk really found the imports
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    assert modules - allowed == set()


def test_core_has_no_dynamic_imports():
    tree = ast.parse(CORE.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            assert name not in {"__import__", "import_module"}, ast.dump(node)


def test_importing_the_core_loads_only_stdlib_modules():
    code = (
        "import sys; before = set(sys.modules); import kaygraph; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    roots = {name.partition(".")[0] for name in out} - {"kaygraph"}
    assert roots - set(sys.stdlib_module_names) == set()
