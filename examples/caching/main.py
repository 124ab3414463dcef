"""caching: skip an expensive exec when its input was seen before.

A BatchNode summarises Python files (the standard library's json package, copied to a temp
dir). Its exec is slow (ast.parse plus --cost-ms of sleep standing in for a paid call, such as
a model or a remote API). A CachePolicy on an SQLiteCache keeps each file's result under a
hash of the file's text (not its name), for --ttl seconds; MetricsNode counts the hits and
misses. Six passes show a cold and a warm cache, a rename and an edit, one entry deleted,
a new version, and expiry.

Run: python examples/caching/main.py [--cost-ms 200] [--ttl 3.0]
"""

import argparse
import ast
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

from kaygraph import BatchNode, CachePolicy, MetricsNode
from kaygraph.stores import SQLiteCache

JSON_FILES = ("__init__.py", "decoder.py", "encoder.py", "scanner.py", "tool.py")


class Summarise(MetricsNode, BatchNode):
    """Counts the functions and classes of each file in shared["dir"] into shared["results"]."""

    def prep(self, shared: dict) -> list[dict]:
        return [{"name": path.name, "source": path.read_text(encoding="utf-8")}
                for path in sorted(Path(shared["dir"]).glob("*.py"))]

    def exec(self, item: dict) -> dict:
        tree = ast.parse(item["source"], filename=item["name"])
        time.sleep(self.params["cost_ms"] / 1000)  # the expensive part, e.g. a model call
        nodes = list(ast.walk(tree))
        return {
            "functions": sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in nodes),
            "classes": sum(isinstance(n, ast.ClassDef) for n in nodes),
        }

    def post(self, shared: dict, prep_res: list[dict], exec_res: list[dict]) -> None:
        shared["results"] = {
            item["name"]: result for item, result in zip(prep_res, exec_res, strict=True)
        }


def by_content(item: dict) -> str:
    """The part of the cache key that comes from an item: its text, so a renamed file still
    hits and an edited one misses (the policy hashes it with the class name and version)."""
    return item["source"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-ms", type=float, default=200, help="cost of one exec (ms)")
    parser.add_argument("--ttl", type=float, default=3.0, help="seconds an entry lives")
    args = parser.parse_args()
    if args.cost_ms < 0:
        parser.error(f"--cost-ms must be >= 0, got {args.cost_ms}")
    if not args.ttl > 0:
        parser.error(f"--ttl must be > 0 seconds, got {args.ttl}")

    with tempfile.TemporaryDirectory(prefix="kaygraph-caching-") as tmp:
        json_dir = Path(sysconfig.get_paths()["stdlib"]) / "json"
        for name in JSON_FILES:
            shutil.copy(json_dir / name, Path(tmp) / name)
        # One file for the cache; another process (or the next run) opening it shares it.
        cache = SQLiteCache(Path(tmp) / "cache.sqlite3")
        shared = {"dir": tmp}
        totals = {"hits": 0, "misses": 0}

        def summariser(version: str) -> Summarise:
            policy = CachePolicy(cache, ttl=args.ttl, key=by_content, version=version)
            node = Summarise(cache_policy=policy)
            node.set_params({"cost_ms": args.cost_ms})
            return node

        def run_pass(name: str, node: Summarise) -> None:
            before = node.get_stats()
            started = time.perf_counter()
            node.run(shared)
            seconds = time.perf_counter() - started
            after = node.get_stats()
            hits = after["cache_hits"] - before["cache_hits"]
            misses = after["cache_misses"] - before["cache_misses"]
            totals["hits"] += hits
            totals["misses"] += misses
            results = shared["results"].values()
            print(
                f"pass={name} hits={hits} misses={misses} seconds={seconds:.3f} "
                f"functions={sum(r['functions'] for r in results)} "
                f"classes={sum(r['classes'] for r in results)}"
            )

        node = summariser("v1")
        run_pass("cold", node)  # every file computed
        run_pass("warm", node)  # every file served from the cache

        # Same text under a new name still hits; new text misses.
        (Path(tmp) / "scanner.py").rename(Path(tmp) / "scanner_renamed.py")
        with open(Path(tmp) / "tool.py", "a", encoding="utf-8") as f:
            f.write("\n# edited\n")
        run_pass("renamed_and_edited", node)

        # Delete one entry by hand (e.g. that file's result is known to be wrong).
        encoder = {"source": (Path(tmp) / "encoder.py").read_text(encoding="utf-8")}
        cache.delete(node.cache_policy.key_for(node, encoder))
        print("deleted the entry of encoder.py")
        run_pass("after_delete", node)

        # A new version (the summariser changed) misses every entry of the old one.
        node = summariser("v2")
        run_pass("new_version", node)

        time.sleep(args.ttl + 0.05)  # let every entry outlive its TTL
        run_pass("after_ttl", node)
        cache.close()

    print(f"total hits={totals['hits']} misses={totals['misses']}")


if __name__ == "__main__":
    main()
