"""Runs the basic cookbook recipes (hello, references, pagination, streaming, caching) as
subprocesses with small inputs and checks what they print."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    """Runs examples/<name>/main.py with this interpreter; returns its stdout."""
    env = dict(os.environ)
    # This checkout's kaygraph first, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name / "main.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


def fields(out: str, start: str) -> dict[str, str]:
    """The key=value pairs of the one output line that starts with `start`."""
    lines = [line for line in out.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"expected one line starting {start!r} in:\n{out}"
    return dict(re.findall(r"(\w+)=(\S+)", lines[0]))


def test_hello_branches_loops_and_stops_at_max_steps() -> None:
    out = run_example("hello", "--n", "27", "--max-steps", "5")
    assert "collatz n=6 steps=8: 6 3 10 5 16 8 4 2 1" in out.splitlines()
    # start is step 1, then four collatz steps: 27 82 41 124 62; step 6 raises.
    stopped = [line for line in out.splitlines() if "stopped the loop: RuntimeError:" in line]
    assert len(stopped) == 1, out
    message = stopped[0].split("RuntimeError:", 1)[1]
    assert "5" in message and "step" in message  # names the limit and the node about to run
    assert "store kept: steps=4 last=62" in out.splitlines()
    assert "collatz n=27 steps=111: 27 ... 1" in out.splitlines()


def test_references_store_is_far_smaller_than_data_store() -> None:
    out = run_example("references", "--limit", "40")
    data, refs = fields(out, "mode=data"), fields(out, "mode=refs")
    assert data["files"] == refs["files"] == "40"
    assert data["lines"] == refs["lines"] and int(refs["lines"]) > 1000
    assert "texts" in data["keys"].split(",") and "texts" not in refs["keys"].split(",")
    assert "line_counts_file" in refs["keys"].split(",")
    assert int(data["store_bytes"]) > 50 * int(refs["store_bytes"])


def test_pagination_totals_match_and_paged_peak_is_far_lower() -> None:
    records, page_size = 20_000, 500
    out = run_example("pagination", "--records", str(records), "--page-size", str(page_size))
    paged, single = fields(out, "mode=paged"), fields(out, "mode=single")
    assert paged["pages"] == str(records // page_size) and single["pages"] == "1"
    expected_cents = sum(i * 104729 % 10000 for i in range(records))
    for run in (paged, single):
        assert run["orders"] == str(records)
        assert run["cents"] == str(expected_cents)
    assert paged["top"] == single["top"]
    assert int(paged["peak_bytes"]) * 5 < int(single["peak_bytes"])


def test_streaming_totals_are_exact_and_peak_is_bounded() -> None:
    out = run_example("streaming", "--size-mb", "8", "--chunk-kb", "64")
    generated, streamed = fields(out, "generated"), fields(out, "streamed")
    file_bytes, chunk_bytes = int(generated["file_bytes"]), int(streamed["chunk_bytes"])
    assert file_bytes > 8_000_000 and chunk_bytes == 64 * 1024
    # Chunks cut at line ends: a number split across two reads would change these totals.
    for key in ("lines", "errors", "ms"):
        assert streamed[key] == generated[f"expected_{key}"], key
    assert streamed["correct"] == "True"
    assert int(streamed["chunks"]) >= file_bytes // chunk_bytes
    peak = int(fields(out, "peak_bytes")["peak_bytes"])
    assert peak < file_bytes / 8
    assert peak < 16 * chunk_bytes


def test_caching_counts_hits_and_misses_exactly() -> None:
    out = run_example("caching", "--cost-ms", "1", "--ttl", "2.0")
    expected = {
        "cold": (0, 5),
        "warm": (5, 0),
        "renamed_and_edited": (4, 1),  # rename hits (the key is the text); the edit misses
        "after_delete": (4, 1),
        "new_version": (0, 5),
        "after_ttl": (0, 5),
    }
    results = set()
    for name, counts in expected.items():
        got = fields(out, f"pass={name} ")
        assert (int(got["hits"]), int(got["misses"])) == counts, out
        results.add((got["functions"], got["classes"]))
    assert len(results) == 1  # cached results equal computed ones
    assert "deleted the entry of encoder.py" in out.splitlines()
    assert fields(out, "total") == {"hits": "13", "misses": "17"}
