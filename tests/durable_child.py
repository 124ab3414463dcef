"""Durable graphs that tests/test_durable_crash.py runs in child processes and kills.

    python durable_child.py SCENARIO MODE STORE_CODE RUN_ID SIDE [VALUE]

SCENARIO: "steps" (n0 >> n1 >> n2 >> n3 >> n4), "items" (a >> squares >> c, squares a
ParallelBatchNode with checkpoint_items=True) or "approve" (a >> approve >> c, approve
interrupts in exec). MODE: "run" starts the run ("steps" then blocks in n2's exec, "items"
in its items 24 and after: the parent kills the child there); "resume" resumes it (with
VALUE, JSON, as the answer when given); "gated" resumes it, but the first step it runs
prints "ready" and waits for a line on stdin first. STORE_CODE: Python source that binds
`store` (tests/conftest.py's StoreBackend.child_code). SIDE: a file each phase appends a
line to ("exec n2", "item 7", ...), so the parent sees the progress and counts the runs.

Prints "shared <JSON>" at the end, or "interrupt <JSON>" when the run is interrupted; an
error propagates (a traceback and exit status 1).
"""

from __future__ import annotations

import json
import os
import sys
import time

from kaygraph import Graph, Interrupt, Node, ParallelBatchNode

ITEMS, FAST = 40, 24  # items of "items"; those before FAST finish, the others block on "run"
ITEMS_KEY = "top[None]1/squares#items"  # where squares' item results go (core_api.md)


class Noted(Node):
    """Appends "<phase> <node_id>" to the side file in each phase; adds its square to shared.
    With `block`, its exec waits (for the kill) once it has said so; with `gate`, its prep
    first waits for the parent's word."""

    def __init__(self, node_id, side, block=False, gate=False):
        super().__init__(node_id=node_id)
        self.side, self.block, self.gate = side, block, gate

    def prep(self, shared):
        if self.gate:
            print("ready", flush=True)
            sys.stdin.readline()
        note(self.side, f"prep {self.node_id}")
        return len(shared)

    def exec(self, seen):
        note(self.side, f"exec {self.node_id}")
        if self.block:
            time.sleep(600)  # killed here
        return seen * seen

    def post(self, shared, seen, square):
        shared[self.node_id] = square
        note(self.side, f"post {self.node_id}")


class Squares(ParallelBatchNode):
    """Squares ITEMS items on 4 threads, each noted as "item i"; on "run" the items from
    FAST on block (noted "block i") once the ones before have had time to be recorded."""

    checkpoint_items = True

    def __init__(self, side, block):
        super().__init__(max_workers=4, node_id="squares")
        self.side, self.block = side, block

    def prep(self, shared):
        return range(ITEMS)

    def exec(self, item):
        note(self.side, f"item {item}")
        if self.block and item >= FAST:
            note(self.side, f"block {item}")
            time.sleep(600)  # killed here
        if self.block:
            time.sleep(0.05)  # FAST items take 0.3 s in all: some are recorded (0.2 s)
        return item * item

    def post(self, shared, items, squares):
        shared["squares"] = squares
        note(self.side, "post squares")


class Approve(Noted):
    def exec(self, seen):
        note(self.side, f"exec {self.node_id}")
        return self.interrupt({"question": "ship it?", "seen": seen})


def note(side, line):
    """Append one line to the side file in one write (lines from threads never mix)."""
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def build(scenario, mode, side):
    """The graph of `scenario` for `mode` (see the module docstring)."""
    g = Graph(node_id="top")
    if scenario == "steps":
        nodes = [Noted(f"n{k}", side, block=mode == "run" and k == 2,
                       gate=mode == "gated" and k == 2) for k in range(5)]
        current = g.start(nodes[0])
        for node in nodes[1:]:
            current = current >> node
    elif scenario == "items":
        g.start(Noted("a", side)) >> Squares(side, block=mode == "run") >> Noted("c", side)
    else:
        g.start(Noted("a", side)) >> Approve("approve", side) >> Noted("c", side)
    return g


def main(scenario, mode, store_code, run_id, side, value=None):
    names = {}
    exec(store_code, names)
    store = names["store"]
    graph = build(scenario, mode, side)
    shared = {}
    try:
        if mode == "run":
            graph.run(shared, run_id=run_id, store=store)
        elif value is None:
            graph.resume(shared, run_id=run_id, store=store)
        else:
            graph.resume(shared, run_id=run_id, store=store, value=json.loads(value))
    except Interrupt as pause:
        print("interrupt " + json.dumps({"run_id": pause.run_id, "node_id": pause.node_id,
                                         "payload": pause.payload}), flush=True)
        return
    print("shared " + json.dumps(shared), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
