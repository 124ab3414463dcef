"""Without the optional extras, recipe tests skip naming the extra and scale_out still runs.

Each test hides installed modules from a subprocess: a directory first on PYTHONPATH holds a
package of the same name whose import raises ModuleNotFoundError, as if it were not installed.
So these tests check the same thing in a venv with every extra and in one with none.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = 'pip install -e ".[examples]"'


def hiding(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment whose Python fails to import each of `modules`, this checkout first."""
    for name in modules:
        package = tmp_path / "hidden" / name
        package.mkdir(parents=True)
        message = f"No module named {name!r} (hidden by a test)"
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError({message!r}, name={name!r})\n", encoding="utf-8")
    path = [str(tmp_path / "hidden"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))


def test_scale_out_without_dask_names_the_extra_and_runs_threads_and_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "scale_out" / "main.py"),
         "--limit", "8", "--chunk", "4", "--workers", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=hiding(tmp_path, "dask", "distributed"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout
    for name in ("threads", "process pool"):
        assert re.search(rf"^{name} +\d+\.\d+ s", out, re.MULTILINE), out
    skipped = re.escape(f"skipped: needs the `examples` extra, {INSTALL}")
    assert re.search(rf"^dask cluster +{skipped} \(No module named 'dask'", out, re.M), out
    assert "results identical: 8 files, same stats on threads, process pool\n" in out


@pytest.mark.parametrize(
    ("tests", "hidden"),
    [
        ("test_examples_advanced.py::test_async_http_counts_match_what_the_server_did",
         ("aiohttp",)),
        ("test_examples_scale_out.py", ("dask", "distributed")),
        ("test_core_cache.py::test_dask_executor_consults_the_cache_in_the_calling_process",
         ("dask", "distributed")),
        ("test_examples_corpus_report.py::test_a_terminal_gets_a_progress_bar_of_files_from_the_events",
         ("tqdm",)),
    ],
)
def test_recipe_tests_skip_naming_the_extra(tests, hidden, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         f"tests/{tests}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=hiding(tmp_path, *hidden),
    )
    # 5: a module skipped as a whole leaves no test collected, which pytest reports so
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    assert re.search(r"^\d+ skipped in ", proc.stdout, re.MULTILINE), proc.stdout  # nothing else
    reasons = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert reasons and all(INSTALL in line for line in reasons), proc.stdout
