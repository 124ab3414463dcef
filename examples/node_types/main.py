"""Pick the right node type for an I/O-bound job.

The job: N requests to a real TCP server on 127.0.0.1 that answers each one after a fixed
latency (20 ms by default), like a slow database or web API. The same job runs four ways:

    Node                      one exec that loops over every request
    BatchNode                 one exec per request, one after another
    ParallelBatchNode         requests on a thread pool (max_workers threads)
    AsyncParallelBatchNode    requests as tasks on the event loop (max_concurrency in flight)

and a table shows the time of each and its speed-up over the plain loop.

Run: python examples/node_types/main.py [--calls 100] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from kaygraph import AsyncParallelBatchNode, BatchNode, Node, ParallelBatchNode

HOST = "127.0.0.1"


# --- the server: answers "n\n" with "n*n\n" after a fixed latency --------------------------

@contextlib.contextmanager
def slow_square_server(latency: float) -> Iterator[int]:
    """Run an asyncio TCP server in a background thread; yield its port.

    Each request is one line holding an integer; the reply, sent `latency` seconds later,
    is its square. The server handles any number of connections at once, so the client
    alone decides how many requests overlap.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await asyncio.sleep(latency)
        writer.write(f"{int(line) ** 2}\n".encode())
        await writer.drain()
        writer.close()

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(handle, HOST, 0, backlog=512)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        return server

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(start())
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def square_sync(port: int, n: int) -> int:
    """One blocking request: send n, wait for the reply, return n*n."""
    with socket.create_connection((HOST, port)) as sock, sock.makefile("rwb") as f:
        f.write(f"{n}\n".encode())
        f.flush()
        return int(f.readline())


async def square_async(port: int, n: int) -> int:
    """The same request without blocking the event loop."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"{n}\n".encode())
    await writer.drain()
    reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(reply)


# --- the four nodes: prep and post are the same, only the shape of exec changes ----------

class Loop(Node):
    """One exec that makes every request in a loop: simple, and strictly one at a time."""

    def prep(self, shared):
        return shared["numbers"]

    def exec(self, numbers):
        return [square_sync(self.params["port"], n) for n in numbers]

    def post(self, shared, prep_res, exec_res):
        shared["results"] = exec_res


class Batch(BatchNode):
    """One exec per item (each item gets its own retries), still one at a time."""

    def prep(self, shared):
        return shared["numbers"]

    def exec(self, n):
        return square_sync(self.params["port"], n)

    def post(self, shared, prep_res, exec_res):
        shared["results"] = exec_res


class Threads(Batch, ParallelBatchNode):
    """Batch's prep, exec and post, with the items on a thread pool (max_workers at once)."""


class Tasks(Batch, AsyncParallelBatchNode):
    """Batch's prep and post, items as tasks on one event loop (max_concurrency at once).

    Only exec changes: exec_async, with an async client.
    """

    async def exec_async(self, n):
        return await square_async(self.params["port"], n)


def timed(node, port: int, numbers: list[int]) -> float:
    """Run `node` on `numbers` against the server; check its answers; return seconds."""
    shared: dict = {"numbers": numbers}
    node.set_params({"port": port})
    start = time.perf_counter()
    if isinstance(node, AsyncParallelBatchNode):
        asyncio.run(node.run_async(shared))
    else:
        node.run(shared)
    seconds = time.perf_counter() - start
    if shared["results"] != [n * n for n in numbers]:
        raise AssertionError(f"{type(node).__name__} returned wrong results")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="requests per run (default 100)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="server latency per request in ms (default 20)")
    parser.add_argument("--workers", type=int, default=10, help="ParallelBatchNode max_workers")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="AsyncParallelBatchNode max_concurrency")
    args = parser.parse_args()

    numbers = list(range(args.calls))
    runs = [
        ("Node (a loop in one exec)", Loop()),
        ("BatchNode", Batch()),
        (f"ParallelBatchNode(max_workers={args.workers})", Threads(max_workers=args.workers)),
        (f"AsyncParallelBatchNode(max_concurrency={args.concurrency})",
         Tasks(max_concurrency=args.concurrency)),
    ]
    print(f"{args.calls} requests, {args.latency_ms:g} ms server latency each "
          f"(lower bound one at a time: {args.calls * args.latency_ms / 1000:.2f} s)")
    with slow_square_server(args.latency_ms / 1000) as port:
        timings = [(label, timed(node, port, numbers)) for label, node in runs]

    base = timings[0][1]
    width = max(len(label) for label, _ in timings)
    print(f"{'node type':<{width}}  {'seconds':>8}  {'speed-up':>8}")
    for label, seconds in timings:
        print(f"{label:<{width}}  {seconds:>8.3f}  {base / seconds:>7.1f}x")
    print("all four returned the same, correct results")


if __name__ == "__main__":
    main()
