"""references: keep references (paths, result file names) in the shared store, not data.

The same job (count the lines of every .py file in the Python standard library) runs twice:
once storing file contents and per-file results in the shared store, once storing only paths
and the name of a result file. It prints the size of each shared store, pickled, in bytes:
what it would cost to checkpoint the store, send it to another process, or keep it in memory.

Run: python examples/references/main.py [--root DIR] [--limit N]
"""

import argparse
import json
import pickle
import sysconfig
import tempfile
from pathlib import Path

from kaygraph import Graph, Node


class ListFiles(Node):
    """Finds the .py files under shared["root"]; stores their paths (references)."""

    def prep(self, shared: dict) -> tuple[str, int | None]:
        return shared["root"], shared.get("limit")

    def exec(self, prep_res: tuple[str, int | None]) -> list[str]:
        root, limit = prep_res
        if not Path(root).is_dir():
            raise FileNotFoundError(f"root is not a directory: {root!r}")
        paths = sorted(str(p) for p in Path(root).rglob("*.py") if "site-packages" not in p.parts)
        return paths[:limit]

    def post(self, shared: dict, prep_res: object, exec_res: list[str]) -> None:
        shared["paths"] = exec_res


def read_text(path: str) -> str:
    """Returns the file's text; undecodable bytes become U+FFFD so no file is skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class LoadContents(Node):
    """The anti-pattern: copies every file's contents into the shared store."""

    def prep(self, shared: dict) -> list[str]:
        return shared["paths"]

    def exec(self, paths: list[str]) -> dict[str, str]:
        return {path: read_text(path) for path in paths}

    def post(self, shared: dict, prep_res: object, exec_res: dict[str, str]) -> None:
        shared["texts"] = exec_res


class CountFromStore(Node):
    """Counts lines of the texts held in the store; keeps the per-file counts there too."""

    def prep(self, shared: dict) -> dict[str, str]:
        return shared["texts"]

    def exec(self, texts: dict[str, str]) -> dict[str, int]:
        return {path: text.count("\n") for path, text in texts.items()}

    def post(self, shared: dict, prep_res: object, exec_res: dict[str, int]) -> None:
        shared["line_counts"] = exec_res
        shared["total_lines"] = sum(exec_res.values())


class CountFromFiles(Node):
    """The pattern: gets paths, streams each file, writes results to a file, stores its name."""

    def prep(self, shared: dict) -> tuple[list[str], str]:
        return shared["paths"], shared["out_dir"]

    def exec(self, prep_res: tuple[list[str], str]) -> tuple[str, int]:
        paths, out_dir = prep_res
        counts = {}
        for path in paths:
            # Line by line: only one line of one file is in memory at a time.
            with open(path, encoding="utf-8", errors="replace") as f:
                counts[path] = sum(line.count("\n") for line in f)
        out = Path(out_dir) / "line_counts.json"
        out.write_text(json.dumps(counts), encoding="utf-8")
        return str(out), sum(counts.values())

    def post(self, shared: dict, prep_res: object, exec_res: tuple[str, int]) -> None:
        shared["line_counts_file"], shared["total_lines"] = exec_res


def store_bytes(shared: dict) -> int:
    """Size of the shared store pickled, in bytes."""
    return len(pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL))


def run(mode: str, root: str, limit: int | None, out_dir: str) -> dict:
    """Runs the job storing "data" or "refs"; returns the shared store."""
    list_files = ListFiles()
    if mode == "data":
        list_files >> LoadContents() >> CountFromStore()
    else:
        list_files >> CountFromFiles()
    shared = {"root": root, "limit": limit, "out_dir": out_dir}
    Graph(list_files).run(shared)
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=sysconfig.get_paths()["stdlib"],
        help="tree of .py files (default: the Python standard library)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    if not Path(args.root).is_dir():
        parser.error(f"--root is not a directory: {args.root!r}")

    sizes = {}
    with tempfile.TemporaryDirectory(prefix="kaygraph-references-") as out_dir:
        for mode in ("data", "refs"):
            shared = run(mode, args.root, args.limit, out_dir)
            sizes[mode] = store_bytes(shared)
            print(
                f"mode={mode} files={len(shared['paths'])} lines={shared['total_lines']} "
                f"store_bytes={sizes[mode]} keys={','.join(sorted(shared))}"
            )
    print(f"references store is {sizes['data'] / sizes['refs']:.0f}x smaller")


if __name__ == "__main__":
    main()
