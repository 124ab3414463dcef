"""kaygraph.otel: the span tree a TracingListener makes, on the OpenTelemetry SDK's in-memory
exporter (sync, async, threads, tasks, nesting, items, retries, errors, interrupts), the
context it leaves behind, spans a node opens, the global provider, the OTLP exporter on a
loopback receiver, and the clear error without the extra."""

import asyncio
import gzip
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason='needs opentelemetry-sdk: pip install -e ".[dev]"')

from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402
from test_core_events import AAct, Act, nested  # noqa: E402  (the graphs both files trace)

from kaygraph import (  # noqa: E402
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchNode,
    Event,
    Graph,
    Interrupt,
    Node,
    ParallelBatchNode,
)
from kaygraph.otel import TracingListener  # noqa: E402
from kaygraph.stores import MemoryStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def otel():
    """(a TracingListener on its own SDK provider, the in-memory exporter, a user tracer)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield TracingListener(provider), exporter, provider.get_tracer("user code")
    provider.shutdown()


def label(span):
    index = span.attributes.get("kaygraph.item_index")
    return span.name if index is None else f"{span.name}#{index}"


def tree(exporter):
    """The finished spans as indented lines, children sorted (concurrent ones start in any
    order); asserts they are all in one trace."""
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    kids = defaultdict(list)
    for s in spans:
        kids[s.parent.span_id if s.parent else None].append(s)

    def lines(span, depth):
        out = ["  " * depth + label(span)]
        for kid in sorted(kids[span.context.span_id], key=lambda k: (k.start_time, label(k))):
            out += lines(kid, depth + 1)
        return out

    roots = kids[None]
    assert len(roots) == 1, [label(r) for r in roots]
    return lines(roots[0], 0)


def spans_named(exporter, name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter, name):
    (span,) = spans_named(exporter, name)
    return span


def parent_of(exporter, span):
    (found,) = [s for s in exporter.get_finished_spans()
                if span.parent is not None and s.context.span_id == span.parent.span_id]
    return found


NESTED = ["run top", "  step a", "  step inner", "    step x", "    step y", "  step b"]


def test_a_sync_run_is_a_run_span_with_a_child_per_step_and_nested_graphs_nest(otel):
    listener, exporter, _ = otel
    before = otel_context.get_current()
    assert nested().run({}, listeners=[listener]) == "end"
    assert tree(exporter) == NESTED
    run, inner, y = one(exporter, "run top"), one(exporter, "step inner"), one(exporter, "step y")
    assert dict(run.attributes) == {"kaygraph.node_id": "top", "kaygraph.path": ("top",),
                                    "kaygraph.action": "end"}
    assert dict(y.attributes) == {"kaygraph.node_id": "y", "kaygraph.path": ("top", "inner", "y"),
                                  "kaygraph.action": "done", "kaygraph.attempt": 1}
    assert inner.start_time <= one(exporter, "step x").start_time
    assert inner.end_time >= y.end_time
    for span in exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.UNSET and not span.events
    assert otel_context.get_current() is before  # nothing left attached


def test_an_async_run_makes_the_same_tree(otel):
    listener, exporter, _ = otel
    before = otel_context.get_current()

    async def main():
        await nested(AAct, AsyncGraph).run_async({}, listeners=[listener])
        return otel_context.get_current()

    assert asyncio.run(main()) == before
    assert tree(exporter) == NESTED


def test_the_run_span_is_a_child_of_the_span_current_where_the_run_starts(otel):
    listener, exporter, user = otel
    with user.start_as_current_span("request") as request:
        nested().run({}, listeners=[listener])
        assert trace.get_current_span() is request
    assert tree(exporter) == ["request"] + ["  " + line for line in NESTED]


def test_two_tracing_listeners_on_one_run_each_make_their_own_tree(otel):
    listener, exporter, _ = otel
    other_spans, other = InMemorySpanExporter(), TracerProvider()
    other.add_span_processor(SimpleSpanProcessor(other_spans))
    before = otel_context.get_current()
    nested().run({}, listeners=[listener, TracingListener(other)])
    assert tree(exporter) == tree(other_spans) == NESTED
    assert otel_context.get_current() is before


def test_a_graph_run_by_two_threads_at_once_makes_two_separate_traces(otel):
    listener, exporter, _ = otel
    barrier = threading.Barrier(2, timeout=30)

    class Meet(Node):
        def exec(self, prep_res):
            barrier.wait()  # both runs are inside this step at the same time

    a = Meet(node_id="a")
    a >> Act(node_id="b")
    graph = Graph(a, node_id="g")
    graph.listeners = (listener,)
    threads = [threading.Thread(target=graph.run, args=({},)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    traces = defaultdict(list)
    for s in spans:
        traces[s.context.trace_id].append(s)
    assert len(traces) == 2
    for members in traces.values():
        (run,) = [s for s in members if s.name == "run g"]
        assert sorted(s.name for s in members
                      if s.parent and s.parent.span_id == run.context.span_id) == ["step a",
                                                                                   "step b"]


def test_parallel_items_on_threads_are_children_of_the_step_and_parent_the_nodes_spans(otel):
    listener, exporter, user = otel
    barrier = threading.Barrier(2, timeout=30)

    class Par(ParallelBatchNode):
        def prep(self, shared):
            return [0, 1, 2]

        def exec(self, item):
            if item < 2:
                barrier.wait()  # items 0 and 1 overlap, on two threads
            with user.start_as_current_span("call") as span:
                span.set_attribute("item", item)
            return item

    Graph(Par(max_workers=2, node_id="par"), node_id="top").run({}, listeners=[listener])
    assert tree(exporter) == ["run top", "  step par",
                              "    item par#0", "      call",
                              "    item par#1", "      call",
                              "    item par#2", "      call"]
    for call in spans_named(exporter, "call"):
        item = parent_of(exporter, call)
        assert item.attributes["kaygraph.item_index"] == call.attributes["item"]
        assert item.attributes["kaygraph.path"] == ("top", "par")
    item0, item1 = (s for s in spans_named(exporter, "item par")
                    if s.attributes["kaygraph.item_index"] < 2)
    assert max(item0.start_time, item1.start_time) < min(item0.end_time, item1.end_time)


def test_async_items_and_the_spans_they_open_nest_under_the_right_item(otel):
    listener, exporter, user = otel
    box = {}

    class Fan(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return [0, 1, 2]

        async def exec_async(self, item):
            with user.start_as_current_span("call") as span:
                span.set_attribute("item", item)
                box.setdefault("in", []).append(item)
                gate = box.setdefault("all", asyncio.Event())
                if len(box["in"]) == 3:
                    gate.set()
                await gate.wait()  # all three calls are open at the same time
            return item

    asyncio.run(AsyncGraph(Fan(node_id="fan"), node_id="top").run_async({},
                                                                          listeners=[listener]))
    assert tree(exporter)[:2] == ["run top", "  step fan"]
    calls = spans_named(exporter, "call")
    assert len(calls) == 3
    for call in calls:
        item = parent_of(exporter, call)
        assert item.name == "item fan"
        assert item.attributes["kaygraph.item_index"] == call.attributes["item"]
        assert parent_of(exporter, item).name == "step fan"
    assert max(c.start_time for c in calls) < min(c.end_time for c in calls)


def test_concurrent_runs_of_a_parallel_batch_graph_nest_under_its_step(otel):
    listener, exporter, user = otel
    box = {}

    class Meet(AsyncNode):
        async def exec_async(self, prep_res):
            with user.start_as_current_span("call") as span:
                span.set_attribute("i", self.params["i"])
                gate = box.setdefault("both", asyncio.Event())
                if self.params["i"] == 0:
                    await gate.wait()  # run 0's step p waits for run 1's
                else:
                    gate.set()

    class Runs(AsyncParallelBatchGraph):
        async def prep_async(self, shared):
            return [{"i": 0}, {"i": 1}]

    p = Meet(node_id="p")
    p >> AAct(node_id="q")
    asyncio.run(AsyncGraph(Runs(p, node_id="runs"), node_id="top").run_async(
        {}, listeners=[listener]))
    lines = tree(exporter)
    assert lines[:2] == ["run top", "  step runs"]
    assert sorted(lines[2:]) == sorted(["    step p", "      call", "    step q"] * 2)
    calls = spans_named(exporter, "call")
    parents = [parent_of(exporter, c) for c in calls]
    assert [p.name for p in parents] == ["step p", "step p"]
    assert parents[0].context.span_id != parents[1].context.span_id
    assert max(p.start_time for p in parents) < min(p.end_time for p in parents)


def test_failed_attempts_are_span_events_and_the_attempt_that_ended_is_an_attribute(
        otel, monkeypatch):
    listener, exporter, _ = otel
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)

    class Flaky(Node):
        def exec(self, prep_res):
            if self.cur_retry < 2:
                raise ConnectionError(f"try {self.cur_retry + 1}")
            return "ok"

    class GiveUp(Node):
        def exec(self, prep_res):
            raise ValueError("never")

        def exec_fallback(self, prep_res, exc):
            return "fallback"

    flaky = Flaky(max_retries=3, wait=0.5, backoff=2, node_id="flaky")
    flaky >> GiveUp(max_retries=2, node_id="give_up")
    Graph(flaky, node_id="top").run({}, listeners=[listener])
    span = one(exporter, "step flaky")
    assert span.attributes["kaygraph.attempt"] == 3
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        ("kaygraph.attempt_failed", {"kaygraph.attempt": 1, "kaygraph.retry_delay": 0.5,
                                     "exception.type": "ConnectionError",
                                     "exception.message": "try 1"}),
        ("kaygraph.attempt_failed", {"kaygraph.attempt": 2, "kaygraph.retry_delay": 1.0,
                                     "exception.type": "ConnectionError",
                                     "exception.message": "try 2"})]
    assert span.status.status_code is StatusCode.UNSET
    gave_up = one(exporter, "step give_up")
    assert gave_up.attributes["kaygraph.attempt"] == 2  # the second failed: the fallback ran
    assert [dict(e.attributes).get("kaygraph.retry_delay") for e in gave_up.events] == [0.0,
                                                                                         None]
    assert gave_up.status.status_code is StatusCode.UNSET  # the fallback's result ended it
    assert waits == [0.5, 1.0]


def test_an_items_retries_are_events_on_the_item_span(otel):
    listener, exporter, _ = otel

    class Items(BatchNode):
        def prep(self, shared):
            return ["a", "b"]

        def exec(self, item):
            if item == "b" and self.cur_retry == 0:
                raise TimeoutError("slow")
            return item

    Graph(Items(max_retries=2, node_id="items"), node_id="top").run({}, listeners=[listener])
    step = one(exporter, "step items")
    a, b = sorted(spans_named(exporter, "item items"),
                  key=lambda s: s.attributes["kaygraph.item_index"])
    assert not step.events and not a.events
    assert [e.name for e in b.events] == ["kaygraph.attempt_failed"]
    assert (a.attributes["kaygraph.attempt"], b.attributes["kaygraph.attempt"]) == (1, 2)


def exception_events(span):
    return [dict(e.attributes) for e in span.events if e.name == "exception"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_error_is_recorded_on_its_step_every_enclosing_step_and_the_run(otel, mode):
    listener, exporter, _ = otel

    class Boom(Node):
        def exec(self, prep_res):
            raise KeyError("boom")

    x = Act(node_id="x")
    x >> Boom(node_id="boom")
    kind = Graph if mode == "sync" else AsyncGraph
    top = kind(kind(x, node_id="inner"), node_id="top")
    before = otel_context.get_current()
    with pytest.raises(KeyError):
        if mode == "sync":
            top.run({}, listeners=[listener])
        else:
            asyncio.run(top.run_async({}, listeners=[listener]))
    assert tree(exporter) == ["run top", "  step inner", "    step x", "    step boom"]
    for name in ("step boom", "step inner", "run top"):
        span = one(exporter, name)
        assert span.status.status_code is StatusCode.ERROR, name
        assert "KeyError" in span.status.description
        (recorded,) = exception_events(span)
        assert recorded["exception.type"] == "KeyError"
        assert "boom" in recorded["exception.message"]
    assert one(exporter, "step x").status.status_code is StatusCode.UNSET
    assert otel_context.get_current() is before


def test_a_failing_item_is_an_error_span_and_a_failed_concurrent_run_ends_every_span(otel):
    listener, exporter, _ = otel
    box = {}

    class Part(AsyncNode):
        async def exec_async(self, prep_res):
            box.setdefault("in", []).append(self.params["i"])
            gate = box.setdefault("both", asyncio.Event())
            if len(box["in"]) == 2:
                gate.set()
            if self.params["i"] == 1:
                await gate.wait()
                raise RuntimeError("run 1 failed")
            await asyncio.Event().wait()  # run 0 hangs until it is cancelled

    class Runs(AsyncParallelBatchGraph):
        async def prep_async(self, shared):
            return [{"i": 0}, {"i": 1}]

    with pytest.raises(RuntimeError):
        asyncio.run(AsyncGraph(Runs(Part(node_id="part"), node_id="runs"), node_id="top")
                    .run_async({}, listeners=[listener]))
    assert tree(exporter) == ["run top", "  step runs", "    step part", "    step part"]
    failed, cancelled = sorted(spans_named(exporter, "step part"),
                               key=lambda s: "CancelledError" in s.status.description)
    assert exception_events(failed)[0]["exception.message"] == "run 1 failed"
    assert "CancelledError" in cancelled.status.description
    for span in exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.ERROR


def test_an_interrupt_is_not_an_error_and_every_span_names_the_run_id(otel):
    listener, exporter, _ = otel

    class Ask(Node):
        def exec(self, prep_res):
            return self.interrupt("ship it?")

    with pytest.raises(Interrupt):
        Graph(Ask(node_id="ask"), node_id="top").run({}, run_id="order-7", store=MemoryStore(),
                                                     listeners=[listener])
    assert tree(exporter) == ["run top", "  step ask"]
    step, run = one(exporter, "step ask"), one(exporter, "run top")
    assert step.attributes["kaygraph.interrupted"] is True
    assert [e.name for e in step.events] == ["kaygraph.interrupt"]
    assert not run.events
    assert run.attributes["kaygraph.interrupted"] is True
    for span in (step, run):
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes["kaygraph.run_id"] == "order-7"


def test_a_stream_closed_early_ends_its_run_span_and_restores_the_context(otel):
    listener, exporter, _ = otel
    before = otel_context.get_current()
    steps = nested().stream({}, listeners=[listener])
    next(steps)
    assert trace.get_current_span().name == "run top"  # current in the consumer meanwhile
    steps.close()
    assert otel_context.get_current() is before
    assert tree(exporter) == ["run top", "  step a"]
    run = one(exporter, "run top")
    assert run.attributes["kaygraph.stopped"] is True
    assert run.status.status_code is StatusCode.UNSET


class Double(ParallelBatchNode):
    """Module level, so a spawned process can unpickle it."""

    def prep(self, shared):
        return [1, 2, 3]

    def exec(self, item):
        return item * 2


def test_items_on_a_process_pool_are_events_on_the_step_span(otel):
    listener, exporter, _ = otel
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        Graph(Double(executor=pool, node_id="d"), node_id="top").run({}, listeners=[listener])
    assert tree(exporter) == ["run top", "  step d"]
    step = one(exporter, "step d")
    assert sorted(dict(e.attributes)["kaygraph.item_index"] for e in step.events
                  if e.name == "kaygraph.item_end") == [0, 1, 2]


def test_a_tracer_provider_that_is_not_one_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="tracer_provider must be .*'provider'"):
        TracingListener("provider")
    assert repr(TracingListener()) == "TracingListener(tracer_provider=None)"


def test_spans_a_strict_listener_before_it_left_open_end_with_their_parent(otel):
    listener, exporter, _ = otel
    before = otel_context.get_current()

    class Strict:
        strict = True

        def __call__(self, event):
            if event.kind == "step_end" and event.node_id == "x":
                raise AssertionError("stop at x")  # the tracing listener never sees x end

    with pytest.raises(AssertionError):
        nested().run({}, listeners=[Strict(), listener])
    assert tree(exporter) == ["run top", "  step a", "  step inner", "    step x"]
    x = one(exporter, "step x")
    assert x.status.status_code is StatusCode.ERROR and "stop at x" in x.status.description
    assert otel_context.get_current() is before


def test_events_it_has_no_span_for_are_ignored(otel):
    listener, exporter, _ = otel
    for kind in ("step_end", "item_end", "run_end", "attempt_failed", "interrupt", "error"):
        listener(Event(kind, None, ("g", "n"), "n", attempt=1, error=ValueError("x")))
    listener(Event("attempt_failed", None, ("g", "n"), "n", item_index=3, attempt=2))
    assert exporter.get_finished_spans() == ()


def test_an_async_stream_closed_in_another_task_ends_its_run_span_without_errors(otel, caplog):
    listener, exporter, _ = otel

    async def main():
        steps = nested(AAct, AsyncGraph).stream_async({}, listeners=[listener])
        await steps.__anext__()
        await asyncio.create_task(steps.aclose())  # GeneratorExit in a copy of this context

    asyncio.run(main())
    assert tree(exporter) == ["run top", "  step a"]
    assert one(exporter, "run top").attributes["kaygraph.stopped"] is True
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def run_python(code, env=None):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_none_uses_the_global_provider_set_later_and_kaygraph_never_sets_it():
    out = run_python("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from kaygraph import Graph, Node
        from kaygraph.otel import TracingListener

        def provider():
            exporter, made = InMemorySpanExporter(), TracerProvider()
            made.add_span_processor(SimpleSpanProcessor(exporter))
            return made, exporter

        own, own_spans = provider()
        Graph(Node(node_id="a"), node_id="g").run({}, listeners=[TracingListener(own)])
        print("own", sorted(s.name for s in own_spans.get_finished_spans()))
        print("global untouched", type(trace.get_tracer_provider()).__name__)
        listener = TracingListener()  # before the application sets its provider
        default, spans = provider()
        trace.set_tracer_provider(default)
        Graph(Node(node_id="a"), node_id="g").run({}, listeners=[listener])
        print("global", sorted(s.name for s in spans.get_finished_spans()))
    """)
    assert out.splitlines() == ["own ['run g', 'step a']", "global untouched ProxyTracerProvider",
                                "global ['run g', 'step a']"]


def test_without_opentelemetry_the_core_imports_and_kaygraph_otel_names_the_extra(tmp_path):
    hidden = tmp_path / "hidden" / "opentelemetry"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'opentelemetry'\", name='opentelemetry')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "hidden"), str(ROOT),
                                         os.environ.get("PYTHONPATH", "")]))
    out = run_python("""
        import kaygraph
        print(kaygraph.Graph(kaygraph.Node(node_id="a")).run({}, listeners=[print]) is None)
        try:
            import kaygraph.otel
        except ImportError as exc:
            print(exc)
    """, env=dict(os.environ, PYTHONPATH=path))
    assert out.splitlines()[-2:] == ["True", 'kaygraph.otel needs opentelemetry-api: pip '
                                             'install "kaygraph[otel]"']


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps each request's body."""

    bodies: list = []

    def do_POST(self):  # noqa: N802 - the http.server name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_reach_an_otlp_receiver_through_the_standard_exporter():
    otlp = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                               reason='needs the OTLP exporter: pip install -e ".[dev]"')
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        provider = TracerProvider()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(otlp.OTLPSpanExporter(endpoint=endpoint)))
        nested().run({}, listeners=[TracingListener(provider)])
        provider.shutdown()  # exports what the batch processor holds
    finally:
        server.shutdown()
        server.server_close()
    spans = {}
    for path, body in Receiver.bodies:
        assert path == "/v1/traces"
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                assert scope.scope.name == "kaygraph"
                for span in scope.spans:
                    spans[span.name] = {a.key: a.value for a in span.attributes}
    assert sorted(spans) == ["run top", "step a", "step b", "step inner", "step x", "step y"]
    path = spans["step y"]["kaygraph.path"].array_value.values
    assert [v.string_value for v in path] == ["top", "inner", "y"]
    assert spans["step y"]["kaygraph.attempt"].int_value == 1
