"""durable: an approval workflow that survives crashes and waits for a person.

It reads the Python standard library's own modules (``sysconfig.get_paths()["stdlib"]``),
picks the ones with the most public functions without a docstring (parsed with ``ast``),
drafts a Markdown report on each, and pauses for a person to approve each report
(``node.interrupt``). Approved reports are written to ``--out``; rejected ones are not.

Every step is checkpointed in an SQLite file (``--db``), so each call of this script goes on
where the last one stopped: after a question, after a crash, or at the end of a finished run.

Run: python examples/durable/main.py --db PATH [--run-id ID] [--approve yes|no]
         [--crash-after-steps N] [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from kaygraph import BatchNode, Event, Graph, Interrupt, Node
from kaygraph.stores import SQLiteStore


def public_functions(path: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The module-level functions of the file at ``path`` whose names don't start with "_"."""
    tree = ast.parse(Path(path).read_bytes(), path)
    return [node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not node.name.startswith("_")]


class ListModules(Node):
    """Store the names of the standard library's top-level modules (its ``*.py`` files)."""

    def prep(self, shared: dict[str, Any]) -> str:
        return shared["stdlib"]

    def exec(self, stdlib: str) -> list[str]:
        return sorted(name[:-3] for name in os.listdir(stdlib) if name.endswith(".py"))

    def post(self, shared: dict[str, Any], prep_res: str, exec_res: list[str]) -> None:
        shared["modules"] = exec_res


class FindUndocumented(BatchNode):
    """Parse every module; pick the ``limit`` with the most public functions that have no
    docstring. ``checkpoint_items``: each module's count is recorded as it is done, so a
    crash in the middle of this step parses only the modules not done yet."""

    checkpoint_items = True

    def prep(self, shared: dict[str, Any]) -> list[list[str]]:
        return [[module, os.path.join(shared["stdlib"], f"{module}.py")]
                for module in shared["modules"]]

    def exec(self, item: list[str]) -> list[Any]:
        module, path = item
        functions = public_functions(path)
        return [module, sum(ast.get_docstring(f) is None for f in functions)]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[list[Any]]) -> str:
        worst = sorted((row for row in exec_res if row[1]), key=lambda row: (-row[1], row[0]))
        shared["picked"] = [module for module, _ in worst[:shared["limit"]]]
        shared["next"] = 0  # index into picked of the module to draft next
        return "draft" if shared["picked"] else "publish"


class DraftReport(Node):
    """Draft the report on the next picked module: its public functions without a docstring,
    with their signatures and lines."""

    def prep(self, shared: dict[str, Any]) -> list[str]:
        module = shared["picked"][shared["next"]]
        return [module, os.path.join(shared["stdlib"], f"{module}.py")]

    def exec(self, prep_res: list[str]) -> dict[str, Any]:
        module, path = prep_res
        functions = public_functions(path)
        missing = [f for f in functions if ast.get_docstring(f) is None]
        version = ".".join(map(str, sys.version_info[:2]))
        lines = [f"# {module}: public functions without a docstring", "",
                 f"{len(missing)} of the {len(functions)} public functions of `{module}.py` "
                 f"(Python {version}) have no docstring.", "",
                 "| function | line |", "|---|---|"]
        lines += [f"| `{f.name}({ast.unparse(f.args)})` | {f.lineno} |" for f in missing]
        return {"module": module, "missing": [f.name for f in missing],
                "text": "\n".join(lines) + "\n"}

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: dict[str, Any]) -> None:
        shared["draft"] = exec_res


class Review(Node):
    """Ask a person whether to publish the draft, and file it as approved or rejected.

    The first time, ``self.interrupt`` raises ``Interrupt``: the run is checkpointed as
    interrupted and this process ends. ``graph.resume(..., value=answer)`` runs this node
    again from ``prep``, and then ``self.interrupt`` returns the answer."""

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared["draft"]

    def exec(self, draft: dict[str, Any]) -> bool:
        names = draft["missing"]
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        question = (f"publish the report on {draft['module']} ({len(names)} public functions "
                    f"without a docstring: {shown})? yes/no")
        return bool(self.interrupt({"question": question, "report": draft["text"]}))

    def post(self, shared: dict[str, Any], draft: dict[str, Any], approved: bool) -> str:
        if approved:
            shared["approved"][draft["module"]] = draft["text"]
        else:
            shared["rejected"].append(draft["module"])
        shared["next"] += 1
        return "draft" if shared["next"] < len(shared["picked"]) else "publish"


class Publish(Node):
    """Write each approved report to ``<out>/<module>.md``.

    A step may run again after a crash (at least once), so its side effect must be safe to
    repeat: writing the same text to the same file is. Each file is written to a temporary
    name and renamed, so a crash never leaves half a report."""

    def prep(self, shared: dict[str, Any]) -> list[Any]:
        return [shared["out"], shared["approved"]]

    def exec(self, prep_res: list[Any]) -> list[str]:
        out, approved = Path(prep_res[0]), prep_res[1]
        out.mkdir(parents=True, exist_ok=True)
        for module, text in approved.items():
            tmp = out / f".{module}.md.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out / f"{module}.md")
        return sorted(approved)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[str]) -> None:
        shared["written"] = exec_res


def build_graph() -> Graph:
    """list -> find -> draft -> review, review -"draft"-> draft (the loop), -> publish."""
    find, draft = FindUndocumented(node_id="find"), DraftReport(node_id="draft")
    review, publish = Review(node_id="review"), Publish(node_id="publish")
    start = ListModules(node_id="list")
    start >> find
    find - "draft" >> draft
    find - "publish" >> publish  # no module lacks docstrings: nothing to review
    draft >> review
    review - "draft" >> draft
    review - "publish" >> publish
    return Graph(start)


class StepCounter:
    """A listener: counts the steps completed in this process and names each on stderr;
    with ``crash_after``, ends the process at once after that many (``os._exit(3)``: no
    cleanup, like a kill). A step's checkpoint is committed before its step_end event; a
    step that raised (an interrupt too) has a step_end with ``error`` set, and no checkpoint
    of its own, so it is not counted."""

    def __init__(self, crash_after: int | None) -> None:
        self.steps, self.crash_after = 0, crash_after

    def __call__(self, event: Event) -> None:
        if event.kind != "step_end" or event.error is not None:
            return
        self.steps += 1
        print(f"step {self.steps}: {event.node_id} -> {event.action or 'default'}",
              file=sys.stderr)
        if self.steps == self.crash_after:
            os._exit(3)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """One call: start, resume or answer the run; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="SQLite file of the checkpoints")
    parser.add_argument("--run-id", default="stdlib-docs", help="default: %(default)s")
    parser.add_argument("--approve", choices=["yes", "no"],
                        help="the answer to the question the run is waiting on")
    parser.add_argument("--crash-after-steps", type=positive_int, metavar="N",
                        help="end the process hard (exit status 3) after its N-th step")
    parser.add_argument("--limit", type=positive_int, default=3,
                        help="modules to review, for a new run (default: %(default)s)")
    parser.add_argument("--out", default="durable_out",
                        help="folder for approved reports, for a new run (default: %(default)s)")
    args = parser.parse_args(argv)

    graph, counter, shared = build_graph(), StepCounter(args.crash_after_steps), {}
    with SQLiteStore(args.db) as store:
        durable = {"run_id": args.run_id, "store": store, "listeners": [counter]}
        checkpoint = store.load(args.run_id)
        waiting = checkpoint is not None and checkpoint["status"] == "interrupted"
        if args.approve and not waiting:
            print(f"note: run {args.run_id!r} is not waiting for an answer; --approve ignored",
                  file=sys.stderr)
        try:
            if checkpoint is None:
                shared = {"stdlib": sysconfig.get_paths()["stdlib"],
                          "out": str(Path(args.out).resolve()), "limit": args.limit,
                          "approved": {}, "rejected": []}
                graph.run(shared, **durable)
            elif waiting and not args.approve:  # asked before: ask again, run nothing
                print(f"question: {checkpoint['interrupt']['payload']['question']}")
                return 0
            elif waiting:
                graph.resume(shared, value=args.approve == "yes", **durable)
            else:  # running (it crashed), failed, or done (then nothing runs)
                graph.resume(shared, **durable)
        except Interrupt as pause:
            print(f"question: {pause.payload['question']}")
            return 0
    print(f"done: {counter.steps} steps run in this process, "
          f"{len(shared['written'])} reports written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
