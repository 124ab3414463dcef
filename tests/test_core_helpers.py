"""Node classes shared by the core tests (no tests here): imported as `test_core_helpers`."""

import asyncio

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
