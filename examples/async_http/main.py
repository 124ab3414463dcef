"""Fetch many URLs from an async node: one shared session, bounded concurrency, retries, timeouts.

The example starts a real aiohttp server on 127.0.0.1 (a free port, in a background thread)
that serves real files: Python standard-library sources. The server is flaky on purpose, and
deterministically so, by the file's position in the sorted list:

    flaky  (i % 6 == 1)   503 for the first two requests, then the file
    down   (i % 15 == 8)  503 for every request
    slow   (i % 10 == 4)  answers only after --slow seconds (longer than the timeout)

An AsyncParallelBatchNode fetches every file with one aiohttp.ClientSession opened and closed by
its resource hooks, at most --concurrency requests at once, retries with backoff on 503 only,
and a per-attempt timeout. The fetched bodies are checked against the sha256 of what the
server sent. Then the blocking-call pitfall: a blocking urlopen inside an async node freezes
the event loop; asyncio.to_thread or an async client fixes it.

Run: python examples/async_http/main.py [--files 30] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import sysconfig
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

from kaygraph import AsyncGraph, AsyncParallelBatchNode

HOST = "127.0.0.1"


# --- the server ----------------------------------------------------------------------------

def rule_for(index: int) -> str:
    """How the server treats the file at `index` of the sorted list (see the module doc)."""
    if index % 15 == 8:
        return "down"
    if index % 10 == 4:
        return "slow"
    if index % 6 == 1:
        return "flaky"
    return "ok"


class FlakyFileServer:
    """An aiohttp app serving `files` at /files/NAME, failing some by `rule_for`.

    It records what it did, so the client's report can be checked against it: requests per
    name and their arrival times (seconds), responses per status, sha256 of every body it
    sent, and the largest number of requests it was handling at once.
    """

    def __init__(self, files: list[Path], latency: float, slow_seconds: float) -> None:
        self.files = {path.name: path for path in files}
        self.rules = {path.name: rule_for(i) for i, path in enumerate(files)}
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[str] = Counter()
        self.sent_sha256: dict[str, str] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = web.Application()
        self.app.add_routes([web.get("/files/{name}", self.get_file),
                             web.get("/pause/{ms}", self.pause)])

    async def get_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound()
        self.arrivals[name].append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)  # every answer takes a little while
            rule = self.rules[name]
            if rule == "down" or (rule == "flaky" and len(self.arrivals[name]) <= 2):
                self.statuses["503"] += 1
                return web.Response(status=503, text="busy, try again")
            if rule == "slow":
                self.statuses["slow"] += 1
                await asyncio.sleep(self.slow_seconds)  # the client gives up first
            body = self.files[name].read_bytes()
            self.sent_sha256[name] = hashlib.sha256(body).hexdigest()
            self.statuses["200"] += 1
            return web.Response(body=body, content_type="text/x-python")
        finally:
            self.in_flight -= 1

    async def pause(self, request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text="ok")


@contextlib.contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Run `app` on a free port of 127.0.0.1 in a thread with its own event loop.

    Yields the base URL. The server's own loop keeps answering even when the client's loop is
    blocked, as a real remote server would (that is what the pitfall below needs).
    """
    sock = socket.socket()
    sock.bind((HOST, 0))
    loop = asyncio.new_event_loop()
    # handler_cancellation: a handler stops when its client hangs up (e.g. after a timeout)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


# --- the client node ------------------------------------------------------------------------

def is_503(exc: Exception) -> bool:
    """retry_on predicate: retry only when the server said 503 Service Unavailable."""
    return isinstance(exc, aiohttp.ClientResponseError) and exc.status == 503


class SessionNode(AsyncParallelBatchNode):
    """An AsyncParallelBatchNode whose items share one aiohttp.ClientSession (one pool).

    The session is a resource of the node: ``async with node:`` opens it through
    ``setup_resources_async`` and closes it through ``cleanup_resources_async``, which is
    where it must happen: aiohttp wants a running event loop for both, and close is a
    coroutine. Graphs run shallow copies of the node, which share the open session.
    """

    base_url: str | None = None  # relative URLs resolve against it
    _session: aiohttp.ClientSession | None = None

    async def setup_resources_async(self) -> None:
        self._session = aiohttp.ClientSession(self.base_url)

    async def cleanup_resources_async(self) -> None:
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session; RuntimeError when the node runs outside ``async with node:``."""
        if self._session is None or self._session.closed:
            raise RuntimeError(f"node {self.node_id!r} has no open session: run it inside "
                               f"'async with node:'")
        return self._session


class FetchFiles(SessionNode):
    """Fetch /files/NAME for every name in shared["names"]; one result dict per name."""

    def __init__(self, base_url: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url

    def prep(self, shared):
        return shared["names"]

    async def exec_async(self, name):
        async with self.session.get(f"/files/{name}") as response:
            response.raise_for_status()  # ClientResponseError; is_503 decides on a retry
            body = await response.read()
        return {"name": name, "attempts": self.cur_retry + 1, "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest()}

    async def exec_fallback_async(self, name, exc):
        # A timeout is not retried (is_503 rejects it); a 503 lands here after max_retries.
        reason = "timed out" if isinstance(exc, TimeoutError) else f"HTTP {exc.status}"
        return {"name": name, "attempts": self.cur_retry + 1, "error": reason}

    def post(self, shared, prep_res, exec_res):
        shared["fetched"] = [r for r in exec_res if "error" not in r]
        shared["failed"] = [r for r in exec_res if "error" in r]


# --- the blocking-call pitfall ---------------------------------------------------------------

def blocking_get(url: str) -> bytes:
    """A plain blocking HTTP GET (the stdlib's urllib, like `requests.get`)."""
    with urllib.request.urlopen(url) as response:
        return response.read()


class BlockingGet(AsyncParallelBatchNode):
    """WRONG: a blocking call inside exec_async stops every other task on the loop."""

    def prep(self, shared):
        return shared["urls"]

    async def exec_async(self, url):
        return blocking_get(url)

    def post(self, shared, prep_res, exec_res):
        shared["bodies"] = exec_res


class ThreadedGet(BlockingGet):
    """Fix 1: keep the blocking client, run it in a worker thread."""

    async def exec_async(self, url):
        return await asyncio.to_thread(blocking_get, url)


class AsyncGet(SessionNode, BlockingGet):
    """Fix 2: an async client (aiohttp, one session for all items)."""

    async def exec_async(self, url):
        async with self.session.get(url) as response:
            return await response.read()


async def run_with_heartbeat(node, shared) -> tuple[float, float]:
    """Run `node` while a heartbeat task ticks every 5 ms; return (seconds, longest stall).

    The stall is how long, at worst, the event loop could not run anything else.
    """
    stall = 0.0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal stall
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            stall = max(stall, loop.time() - before - 0.005)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)  # let the heartbeat start
    start = time.perf_counter()
    await node.run_async(shared)
    seconds = time.perf_counter() - start
    done.set()
    await beat
    return seconds, stall


async def pitfall(base_url: str, requests: int, pause_ms: int) -> None:
    urls = [f"{base_url}/pause/{pause_ms}"] * requests
    print(f"\nthe blocking-call pitfall: {requests} requests to a URL that answers after "
          f"{pause_ms} ms, from an AsyncParallelBatchNode(max_concurrency={requests})")
    print(f"{'exec_async uses':<34}  {'seconds':>7}  {'longest loop stall':>18}")
    runs = [("urllib urlopen (blocking): WRONG", BlockingGet(max_concurrency=requests)),
            ("asyncio.to_thread(urlopen)", ThreadedGet(max_concurrency=requests)),
            ("aiohttp session.get", AsyncGet(max_concurrency=requests))]
    for label, node in runs:
        shared = {"urls": urls}
        async with node:  # opens and closes AsyncGet's session; nothing for the others
            seconds, stall = await run_with_heartbeat(node, shared)
        if shared["bodies"] != [b"ok"] * requests:
            raise SystemExit(f"{label}: wrong bodies {shared['bodies']!r}")
        print(f"{label:<34}  {seconds:>7.3f}  {stall:>16.3f} s")


# --- main --------------------------------------------------------------------------------------

async def fetch_all(base_url: str, names: list[str], args: argparse.Namespace) -> dict:
    fetch = FetchFiles(base_url, max_retries=args.retries, wait=args.wait, backoff=2.0,
                       retry_on=is_503, timeout=args.timeout, max_concurrency=args.concurrency)
    shared: dict = {"names": names}
    async with fetch:  # the session is open for the whole run and closed even on an error
        await AsyncGraph(fetch).run_async(shared)
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30, help="files to serve (default 30)")
    parser.add_argument("--concurrency", type=int, default=8, help="max_concurrency (default 8)")
    parser.add_argument("--retries", type=int, default=3, help="max_retries (default 3)")
    parser.add_argument("--wait", type=float, default=0.05,
                        help="first backoff wait in seconds, doubled each retry (default 0.05)")
    parser.add_argument("--timeout", type=float, default=0.5,
                        help="per-attempt timeout in seconds (default 0.5)")
    parser.add_argument("--latency", type=float, default=0.02,
                        help="server latency of every request in seconds (default 0.02)")
    parser.add_argument("--slow", type=float, default=2.0,
                        help="how long slow files take in seconds (default 2.0)")
    parser.add_argument("--pitfall-requests", type=int, default=15)
    parser.add_argument("--pitfall-ms", type=int, default=100)
    args = parser.parse_args()

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[: args.files]
    server = FlakyFileServer(files, args.latency, args.slow)
    plan = Counter(server.rules.values())
    with serve_in_thread(server.app) as base_url:
        print(f"server {base_url} serves {len(files)} files from {stdlib}: {plan['ok']} ok, "
              f"{plan['flaky']} flaky (503 twice), {plan['down']} down (always 503), "
              f"{plan['slow']} slow ({args.slow:g} s); {args.latency:g} s latency on every request")
        shared = asyncio.run(fetch_all(base_url, [f.name for f in files], args))
        report(shared, server, args)
        asyncio.run(pitfall(base_url, args.pitfall_requests, args.pitfall_ms))


def report(shared: dict, server: FlakyFileServer, args: argparse.Namespace) -> None:
    fetched, failed = shared["fetched"], shared["failed"]
    for r in fetched:  # every body is exactly what the server sent, and what is on disk
        disk = hashlib.sha256(server.files[r["name"]].read_bytes()).hexdigest()
        if not r["sha256"] == server.sent_sha256[r["name"]] == disk:
            raise SystemExit(f"{r['name']}: the body fetched differs from the file served")
    timed_out = [r for r in failed if r["error"] == "timed out"]
    gave_up = [r for r in failed if r["error"] != "timed out"]
    retried = sum(r["attempts"] - 1 for r in fetched + failed)
    recovered = [r for r in fetched if r["attempts"] > 1]
    print(f"fetched   {len(fetched)} files, {sum(r['bytes'] for r in fetched)} bytes; "
          f"sha256 of every body matches what the server sent")
    print(f"retried   {retried} requests after a 503 ({len(recovered)} files recovered)")
    print(f"timed out {len(timed_out)} files after {args.timeout:g} s "
          f"(not retried: retry_on accepts only 503): "
          + ", ".join(r["name"] for r in timed_out))
    print(f"gave up   {len(gave_up)} files after {args.retries} attempts of 503: "
          + ", ".join(r["name"] for r in gave_up))
    waits = [[b - a for a, b in zip(times, times[1:], strict=False)]
             for times in server.arrivals.values()]
    first = min((w[0] for w in waits if len(w) >= 1), default=0.0)
    second = min((w[1] for w in waits if len(w) >= 2), default=0.0)
    print(f"backoff   shortest gap before attempt 2: {first:.3f} s, before attempt 3: "
          f"{second:.3f} s (wait={args.wait:g}, backoff=2)")
    requests = sum(len(times) for times in server.arrivals.values())
    print(f"server    {requests} requests: {server.statuses['200']} x 200, "
          f"{server.statuses['503']} x 503, {server.statuses['slow']} slow; "
          f"at most {server.max_in_flight} at once (max_concurrency={args.concurrency})")


if __name__ == "__main__":
    main()
