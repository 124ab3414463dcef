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


def test_core_is_one_file(tmp_path):
    """__init__.py is the only module the core needs: importing kaygraph loads none of the
    modules beside it, and a copy of the file alone, vendored into another tree, runs."""
    assert CORE.name == "__init__.py"
    tree = ast.parse(CORE.read_text(encoding="utf-8"))
    assert "kaygraph" not in set(imported_top_level_modules(tree))  # no kaygraph.stores, ...
    code = "import sys, kaygraph; print(sorted(m for m in sys.modules if 'kaygraph.' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
    vendored = tmp_path / "vendor" / "kaygraph"
    vendored.mkdir(parents=True)
    (vendored / "__init__.py").write_bytes(CORE.read_bytes())
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import kaygraph\n"
        "class Add(kaygraph.Node):\n"
        "    def post(self, shared, prep_res, exec_res): shared['n'] += 1\n"
        "shared = {'n': 0}; kaygraph.Graph(start=Add()).run(shared)\n"
        "print(kaygraph.__file__, shared['n'])"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "vendor")],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == [str(vendored / "__init__.py"), "1"]


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
