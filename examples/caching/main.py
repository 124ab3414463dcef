"""caching: skip an expensive exec when its input was seen before.

A BatchNode summarises Python files (the standard library's json package, copied to a temp
dir). Its exec is slow (ast.parse plus --cost-ms of sleep standing in for a paid call, such as
a model or a remote API). Results are cached in the shared store under the SHA-256 of the file's
bytes, with a time to live (TTL), a bound on the number of entries (least recently used entry
evicted first), hit/miss counts, and invalidation of one entry. Five passes show each of them.

Run: python examples/caching/main.py [--cost-ms 200] [--ttl 1.0] [--max-entries 5]
"""

import argparse
import ast
import hashlib
import shutil
import sysconfig
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

from kaygraph import BatchNode, Graph

JSON_FILES = ("__init__.py", "decoder.py", "encoder.py", "scanner.py", "tool.py")


class TTLCache:
    """An LRU cache whose entries expire ``ttl`` seconds after they were stored.

    Args:
        max_entries: most entries kept (int >= 1); storing one more evicts the least recently
            used entry.
        ttl: seconds (float > 0) an entry stays valid after ``put``.
        clock: returns the time in seconds; time.monotonic by default.

    Counts ``hits``, ``misses``, ``evictions`` (dropped for room) and ``expired`` (found stale).
    Values must not be None: ``get`` returns None for a miss.
    """

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        self.max_entries, self.ttl, self.clock = max_entries, ttl, clock
        self._entries: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()  # LRU first
        self.hits = self.misses = self.evictions = self.expired = 0

    def get(self, key: Hashable) -> object | None:
        """Returns the value stored under key, or None if it is missing or expired."""
        entry = self._entries.get(key)
        if entry is not None and self.clock() >= entry[0]:
            del self._entries[key]
            self.expired += 1
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: object) -> None:
        """Stores value under key for ttl seconds, evicting least recently used entries."""
        self._entries[key] = (self.clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, key: Hashable) -> bool:
        """Drops the entry for key; returns whether there was one."""
        return self._entries.pop(key, None) is not None

    def stats(self) -> dict[str, int]:
        """The counters so far: hits, misses, evictions, expired."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expired": self.expired,
        }

    def __len__(self) -> int:
        return len(self._entries)


def content_key(data: bytes) -> str:
    """The cache key: a hash of the bytes, so a renamed file still hits, an edited one misses."""
    return hashlib.sha256(data).hexdigest()


class Summarise(BatchNode):
    """Counts functions and classes of each file in shared["dir"], through shared["cache"]."""

    def prep(self, shared: dict) -> list[tuple[str, str, bytes, dict | None]]:
        cache: TTLCache = shared["cache"]
        items = []
        for path in sorted(Path(shared["dir"]).glob("*.py")):
            data = path.read_bytes()
            key = content_key(data)
            items.append((path.name, key, data, cache.get(key)))
        return items

    def exec(self, item: tuple[str, str, bytes, dict | None]) -> dict:
        name, key, data, cached = item
        if cached is not None:
            return cached  # a hit: none of the work below
        tree = ast.parse(data, filename=name)
        time.sleep(self.params["cost_ms"] / 1000)  # the expensive part, e.g. a model call
        nodes = list(ast.walk(tree))
        return {
            "functions": sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in nodes),
            "classes": sum(isinstance(n, ast.ClassDef) for n in nodes),
        }

    def post(self, shared: dict, prep_res: list, exec_res: list[dict]) -> None:
        cache: TTLCache = shared["cache"]
        shared["results"] = {}
        for (name, key, _data, cached), result in zip(prep_res, exec_res, strict=True):
            if cached is None:
                cache.put(key, result)
            shared["results"][name] = result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost-ms", type=float, default=200, help="cost of one exec (ms)")
    parser.add_argument("--ttl", type=float, default=1.0, help="seconds an entry lives")
    parser.add_argument("--max-entries", type=int, default=5, help="LRU bound (default 5)")
    args = parser.parse_args()
    if args.cost_ms < 0:
        parser.error(f"--cost-ms must be >= 0, got {args.cost_ms}")

    cache = TTLCache(args.max_entries, args.ttl)
    graph = Graph(Summarise())
    graph.set_params({"cost_ms": args.cost_ms})

    with tempfile.TemporaryDirectory(prefix="kaygraph-caching-") as tmp:
        json_dir = Path(sysconfig.get_paths()["stdlib"]) / "json"
        for name in JSON_FILES:
            shutil.copy(json_dir / name, Path(tmp) / name)
        shared = {"dir": tmp, "cache": cache}

        def run_pass(name: str) -> None:
            before = cache.stats()
            started = time.perf_counter()
            graph.run(shared)
            seconds = time.perf_counter() - started
            counts = " ".join(f"{k}={v - before[k]}" for k, v in cache.stats().items())
            results = shared["results"].values()
            print(
                f"pass={name} {counts} entries={len(cache)} seconds={seconds:.3f} "
                f"functions={sum(r['functions'] for r in results)} "
                f"classes={sum(r['classes'] for r in results)}"
            )

        run_pass("cold")  # every file computed
        run_pass("warm")  # every file served from the cache

        # Same bytes under a new name still hit; new bytes miss, and the full cache evicts
        # its least recently used entry (the old tool.py, which nothing reads any more).
        (Path(tmp) / "scanner.py").rename(Path(tmp) / "scanner_renamed.py")
        with open(Path(tmp) / "tool.py", "a", encoding="utf-8") as f:
            f.write("\n# edited\n")
        run_pass("renamed_and_edited")

        # Invalidate one entry by hand (e.g. the summariser changed for that file).
        key = content_key((Path(tmp) / "encoder.py").read_bytes())
        print(f"invalidated encoder.py: {cache.invalidate(key)}")
        run_pass("after_invalidate")

        time.sleep(args.ttl + 0.05)  # let every entry outlive its TTL
        run_pass("after_ttl")

    print("total " + " ".join(f"{k}={v}" for k, v in cache.stats().items()))


if __name__ == "__main__":
    main()
