"""Runs examples/durable/main.py as a user does, one process per call, on the real standard
library: the question / answer protocol, hard crashes (exit status 3) and their resumes, the
final line, and which reports end up on disk. Each call prints one stderr line per step it
completed, so the steps of all calls add up to those of one run exactly when no completed
step ran twice; the SQLite file's history says the same from the store's side."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from kaygraph.stores import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "examples" / "durable" / "main.py"
RUN_ID = "stdlib-docs"  # the recipe's default
QUESTION = re.compile(r"question: publish the report on (\w+) \((\d+) public functions without "
                      r"a docstring: ([\w, .]+)\)\? yes/no")


class Call:
    """One call of main.py: its exit status, stdout lines, and the steps it ran (node ids)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, str(MAIN), "--db", str(tmp / "runs.sqlite3"),
             "--out", str(tmp / "out"), *args],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp,
        )
        assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
        self.status, self.stderr = proc.returncode, proc.stderr
        self.lines = proc.stdout.splitlines()
        self.steps = re.findall(r"^step \d+: (\w+) -> \w+$", proc.stderr, re.M)

    def question(self) -> tuple[str, int, str]:
        """(module, undocumented count, the names shown) of the one line this call printed."""
        assert self.status == 0 and len(self.lines) == 1, (self.status, self.lines, self.stderr)
        match = QUESTION.fullmatch(self.lines[0])
        assert match, self.lines
        return match[1], int(match[2]), match[3]

    def done(self) -> tuple[int, int]:
        """(steps run in this process, reports written) of the final line."""
        assert self.status == 0 and len(self.lines) == 1, (self.status, self.lines, self.stderr)
        match = re.fullmatch(r"done: (\d+) steps run in this process, (\d+) reports written",
                             self.lines[0])
        assert match, self.lines
        return int(match[1]), int(match[2])


def history(tmp: Path) -> list[tuple[str | None, str]]:
    with SQLiteStore(tmp / "runs.sqlite3") as store:
        return [(h["node_id"], h["status"]) for h in store.history(RUN_ID)]


def test_questions_and_answers_write_only_the_approved_reports(tmp_path: Path) -> None:
    first = Call(tmp_path, "--limit", "3")
    module1, count1, shown1 = first.question()
    assert first.steps == ["list", "find", "draft"]  # two steps and more before the question
    assert count1 >= 1 and shown1.split(", ")[0].isidentifier()
    assert history(tmp_path) == [("list", "running"), ("find", "running"),
                                 ("draft", "running"), ("review", "interrupted")]
    with SQLiteStore(tmp_path / "runs.sqlite3") as store:  # the payload carries the draft
        report = store.load(RUN_ID)["interrupt"]["payload"]["report"]  # type: ignore[index]
    assert report.startswith(f"# {module1}: public functions without a docstring\n")

    again = Call(tmp_path)  # still waiting: the same question, nothing runs
    assert again.question() == (module1, count1, shown1) and again.steps == []
    assert len(history(tmp_path)) == 4

    yes = Call(tmp_path, "--approve", "yes")
    module2, _, _ = yes.question()
    assert yes.steps == ["review", "draft"] and module2 != module1
    no = Call(tmp_path, "--approve", "no")
    module3, _, _ = no.question()
    assert no.steps == ["review", "draft"] and module3 not in (module1, module2)
    last = Call(tmp_path, "--approve", "yes")
    assert last.steps == ["review", "publish"]
    assert last.done() == (2, 2)

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{module1}.md", f"{module3}.md"])
    text = (out / f"{module1}.md").read_text(encoding="utf-8")
    assert text == report
    names = [n for n in shown1.split(", ") if n != "..."]
    assert all(f"| `{name}(" in text for name in names)
    assert len(re.findall(r"^\| `\w+\(", text, re.M)) == count1  # one row per function

    finished = Call(tmp_path, "--approve", "yes")  # a done run runs nothing, answers nothing
    assert finished.done() == (0, 2) and finished.steps == []
    assert "not waiting for an answer; --approve ignored" in finished.stderr
    calls = [first, again, yes, no, last, finished]
    # list, find, 3 x (draft, review), publish: no step ran twice
    assert sum(len(c.steps) for c in calls) == 2 + 2 * 3 + 1
    assert history(tmp_path)[-1][1] == "done"


def test_a_crash_resumes_where_the_checkpoint_is(tmp_path: Path) -> None:
    calls = [Call(tmp_path, "--limit", "2", "--crash-after-steps", "2")]
    assert calls[0].status == 3 and calls[0].lines == []
    assert calls[0].steps == ["list", "find"]

    calls.append(Call(tmp_path))  # the same command without the crash
    module1, _, _ = calls[-1].question()
    assert calls[-1].steps == ["draft"]  # list and find did not run again

    # The answer is recorded with its step; a crash after it loses nothing.
    calls.append(Call(tmp_path, "--approve", "yes", "--crash-after-steps", "1"))
    assert calls[-1].status == 3 and calls[-1].steps == ["review"]
    calls.append(Call(tmp_path, "--approve", "yes"))  # not applied to the next question
    module2, _, _ = calls[-1].question()
    assert module2 != module1 and calls[-1].steps == ["draft"]
    assert "--approve ignored" in calls[-1].stderr

    calls.append(Call(tmp_path, "--approve", "no", "--crash-after-steps", "2"))
    assert calls[-1].status == 3 and calls[-1].steps == ["review", "publish"]
    calls.append(Call(tmp_path, "--approve", "no"))  # every step had run: it just ends
    assert calls[-1].done() == (0, 1) and calls[-1].steps == []

    ran = [node for call in calls for node in call.steps]
    assert ran == ["list", "find", "draft", "review", "draft", "review", "publish"]
    running = [node for node, status in history(tmp_path) if status == "running"]
    assert running == ran  # one checkpoint per completed step, none twice
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{module1}.md"]


def test_bad_arguments_exit_2_and_name_the_option(tmp_path: Path) -> None:
    bad = Call(tmp_path, "--crash-after-steps", "0")
    assert bad.status == 2 and "--crash-after-steps: must be >= 1, got 0" in bad.stderr
    bad = Call(tmp_path, "--approve", "maybe")
    assert bad.status == 2 and "--approve: invalid choice: 'maybe'" in bad.stderr
    assert not (tmp_path / "runs.sqlite3").exists()
