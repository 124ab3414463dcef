"""Node classes shared by the core tests (no tests here): imported as `test_core_helpers`."""

import asyncio
import threading

from kaygraph import AsyncNode, Node


class Rec(Node):
    """Appends its node_id to shared["trace"] in prep and returns a fixed action."""

    def __init__(self, name, action=None, **kw):
        super().__init__(node_id=name, **kw)
        self.action = action

    def prep(self, shared):
        shared.setdefault("trace", []).append(self.node_id)

    def post(self, shared, prep_res, exec_res):
        return self.action


class ARec(AsyncNode):
    """The async twin of Rec: it yields to the event loop once in prep_async."""

    def __init__(self, name, action=None, **kw):
        super().__init__(node_id=name, **kw)
        self.action = action

    async def prep_async(self, shared):
        await asyncio.sleep(0)
        shared.setdefault("trace", []).append(self.node_id)

    async def post_async(self, shared, prep_res, exec_res):
        return self.action


class InterleavedAB:
    """Drives two batch items so that a cur_retry shared between items shows.

    Item A fails on attempts 0 and 1 and succeeds on attempt 2; item B fails once. B's first
    attempt starts first and fails only while A is on its last attempt: with a cur_retry
    shared between items, B would read A's attempt (and go straight to its fallback) and A
    would read B's. ``log`` gets (item, cur_retry at start, cur_retry at end) per attempt.
    """

    items = ("A", "B")

    def __init__(self):
        self.a_last, self.b_failed = threading.Event(), threading.Event()
        self.log, self.fallbacks = [], []

    def exec(self, node, item):
        start = node.cur_retry
        if item == "A" and start == 2:
            self.a_last.set()
            assert self.b_failed.wait(10)
        if item == "B" and start == 0:
            assert self.a_last.wait(10)
        self.log.append((item, start, node.cur_retry))
        if item == "B" and start == 0:
            self.b_failed.set()
            raise ValueError("B fails once")
        if item == "A" and start < 2:
            raise ValueError("A fails twice")
        return f"{item} ok on {node.cur_retry}"

    def attempts(self, item):
        return [entry for entry in self.log if entry[0] == item]


class ResourceLog:
    """Mixin recording setup_resources / cleanup_resources calls in ``events``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = []

    def setup_resources(self):
        self.events.append("setup")

    def cleanup_resources(self):
        self.events.append("cleanup")
