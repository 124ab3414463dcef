"""streaming: process a file far larger than memory you want to spend, chunk by chunk.

Generates a web-server log of --size-mb MiB in a temp dir (default 200), then a BatchNode whose
``prep`` is a generator reads it in --chunk-kb KiB chunks cut at line ends: only a chunk or two is
ever in memory, whatever the file size. It prints the totals (checked against the totals known
while generating the file) and the peak memory of the run, measured with tracemalloc.

Run: python examples/streaming/main.py [--size-mb 200] [--chunk-kb 1024]
"""

import argparse
import random
import re
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from kaygraph import BatchNode, Graph

LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR")
MS = re.compile(rb" (\d+)ms\n")


def make_block(block_bytes: int) -> tuple[bytes, dict[str, int]]:
    """Returns about block_bytes of log lines (whole lines) and their totals."""
    rng = random.Random(42)
    lines, totals = [], {"lines": 0, "errors": 0, "ms": 0}
    size = 0
    while True:
        level, ms = rng.choice(LEVELS), rng.randint(1, 2500)
        line = (
            f"2026-11-21T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00 {level} "
            f"GET /api/items/{rng.randint(1, 99999)} {200 if level != 'ERROR' else 503} {ms}ms\n"
        ).encode()
        if size + len(line) > block_bytes:
            return b"".join(lines), totals
        lines.append(line)
        size += len(line)
        totals["lines"] += 1
        totals["errors"] += level == "ERROR"
        totals["ms"] += ms


def generate_log(path: Path, size_mb: int) -> dict[str, int]:
    """Writes size_mb MiB of log to path, one 1 MiB block at a time; returns the file's totals."""
    block, block_totals = make_block(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(block)
    return {key: value * size_mb for key, value in block_totals.items()}


def read_chunks(path: str, chunk_bytes: int) -> Iterator[bytes]:
    """Yields the file in pieces of about chunk_bytes, each ending at a line end."""
    with open(path, "rb") as f:
        tail = b""
        while block := f.read(chunk_bytes):
            block = tail + block
            cut = block.rfind(b"\n") + 1  # a line cut in two waits for the next read
            tail = block[cut:]
            if cut:
                yield block[:cut]
        if tail:
            yield tail


class CountLog(BatchNode):
    """Counts lines, errors and total response time of a log, one chunk per item."""

    def prep(self, shared: dict) -> Iterator[bytes]:
        # A generator: chunks are read only as the node asks for them.
        return read_chunks(shared["log_path"], shared["chunk_bytes"])

    def exec(self, chunk: bytes) -> tuple[int, int, int]:
        lines = chunk.count(b"\n")
        errors = chunk.count(b" ERROR ")
        ms = sum(map(int, MS.findall(chunk)))
        return lines, errors, ms

    def post(self, shared: dict, prep_res: object, exec_res: list[tuple[int, int, int]]) -> None:
        shared["chunks"] = len(exec_res)
        shared["totals"] = {
            "lines": sum(r[0] for r in exec_res),
            "errors": sum(r[1] for r in exec_res),
            "ms": sum(r[2] for r in exec_res),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="log size in MiB (default 200)")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="chunk size in KiB")
    args = parser.parse_args()
    for name in ("size_mb", "chunk_kb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    with tempfile.TemporaryDirectory(prefix="kaygraph-streaming-") as tmp:
        log_path = Path(tmp) / "access.log"
        expected = generate_log(log_path, args.size_mb)
        file_bytes = log_path.stat().st_size
        print(
            f"generated file_bytes={file_bytes} expected_lines={expected['lines']} "
            f"expected_errors={expected['errors']} expected_ms={expected['ms']}"
        )

        shared = {"log_path": str(log_path), "chunk_bytes": args.chunk_kb * 1024}
        tracemalloc.start()
        try:
            Graph(CountLog()).run(shared)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    totals = shared["totals"]
    print(
        f"streamed chunks={shared['chunks']} chunk_bytes={shared['chunk_bytes']} "
        f"lines={totals['lines']} errors={totals['errors']} ms={totals['ms']} "
        f"correct={totals == expected}"
    )
    print(
        f"peak_bytes={peak} file_bytes={file_bytes} "
        f"peak_vs_file={peak / file_bytes:.2%} peak_vs_chunk={peak / shared['chunk_bytes']:.1f}x"
    )


if __name__ == "__main__":
    main()
