"""OpenTelemetry tracing for kaygraph runs: :class:`TracingListener` turns a run's events
into spans.

Install with ``pip install "kaygraph[otel]"`` (``opentelemetry-api``); to export the spans,
set up a tracer provider from ``opentelemetry-sdk`` with an exporter (OTLP reaches Jaeger,
Tempo, Langfuse, Phoenix and most other backends). This module never sets the global
tracer provider; the core never imports it.

The span tree: one span per run (``run GRAPH``), a child per step (``step NODE``; the steps of
a nested graph are children of its step), and a child per item of a batch node
(``item NODE``). Failed attempts are span events; an error that ended a step, item or run
is recorded on its span, whose status is then ERROR. Spans are made current while they run
(in the thread or task that runs the step or item), so a span a node opens in ``exec`` is a
child of its step's or item's span, also for items on threads and asyncio tasks.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'kaygraph.otel needs opentelemetry-api: pip install "kaygraph[otel]"') from exc

from kaygraph import Event, Interrupt, __version__

__all__ = ["TracingListener"]

_STARTS = {"run_start": "run", "step_start": "step", "item_start": "item"}
# Set in the context a listener makes current for a span: the event it started for, and the
# context it started in.
_EVENT = otel_context.create_key("kaygraph-event")
_OUTSIDE = otel_context.create_key("kaygraph-outside")
_ENDS = {"run_end": "run", "step_end": "step", "item_end": "item"}


class _Open:
    """A span this listener started and has not ended; ``parent`` is the one open around
    it in the same context (a chain, so a copied context sees its own)."""

    __slots__ = ("span", "kind", "path", "item_index", "parent", "token", "outside",
                 "attempts", "gave_up")

    def __init__(self, span: Span, kind: str, event: Event, parent: _Open | None) -> None:
        self.span, self.kind, self.parent = span, kind, parent
        self.path, self.item_index = event.path, event.item_index
        self.token: contextvars.Token[_Open | None] | None = None
        self.outside: Context | None = None  # what was current when it started
        self.attempts, self.gave_up = 0, False  # failed attempts seen; the last gave up

    def matches(self, kind: str, event: Event) -> bool:
        return (self.kind == kind and self.path == event.path
                and self.item_index == event.item_index)


def _attributes(event: Event) -> dict[str, Any]:
    found: dict[str, Any] = {"kaygraph.node_id": event.node_id,
                             "kaygraph.path": list(event.path)}
    if event.run_id is not None:
        found["kaygraph.run_id"] = event.run_id
    if event.item_index is not None:
        found["kaygraph.item_index"] = event.item_index
    return found


def _error_attributes(error: BaseException) -> dict[str, Any]:
    return {"exception.type": type(error).__qualname__, "exception.message": str(error)}


class TracingListener:
    """A listener (pass it in ``listeners=`` or set it on ``graph.listeners``) that turns a
    run's events into OpenTelemetry spans.

    ``TracingListener(tracer_provider=None)``: the ``TracerProvider`` that makes the spans
    (None: the global one, ``opentelemetry.trace.get_tracer_provider()``, looked up when the
    first span starts, so it may be set after this listener is made). TypeError for
    anything that is not a ``TracerProvider``.

    One span per run (``run GRAPH``), its child per step (``step NODE``, nested graphs
    nest), and per item of a batch node (``item NODE``). Attributes: ``kaygraph.node_id``,
    ``kaygraph.path`` (node ids from the top graph down), ``kaygraph.run_id`` (durable runs),
    ``kaygraph.item_index`` (items), ``kaygraph.action`` (what post returned, when not
    None) and ``kaygraph.attempt`` (steps and items: the attempt of ``exec`` that ended it,
    1-based). Each failed attempt is a span event ``kaygraph.attempt_failed``
    (``kaygraph.attempt``, ``exception.type``, ``exception.message``, and
    ``kaygraph.retry_delay`` in seconds unless it gave up). An error that ended a step,
    item or run (a cancellation too) is recorded on its span (``record_exception``) and
    sets its status to ERROR. An :class:`~kaygraph.Interrupt` is not an error: its spans get
    ``kaygraph.interrupted = True``, and the step of the node that asked the event
    ``kaygraph.interrupt``; a stream closed early ends its run span with
    ``kaygraph.stopped = True``. Items run on other processes (a process pool, Dask) have no
    span: each is a ``kaygraph.item_end`` event on its step's span.

    A span is the current one while its step or item runs, in the thread or task that
    runs it, so a span the node opens is its child; the run span is a child of the span
    current where the run starts. A stream keeps its run span current in its consumer
    between steps: close a stream you stop early in the task that iterates it
    (``await steps.aclose()`` for ``stream_async``). Not ``strict``: its own error would be
    logged, never raised into the run. It keeps no state but the spans open in each
    context, so one listener serves concurrent runs.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider,
                                                          trace.TracerProvider):
            raise TypeError(f"tracer_provider must be an opentelemetry TracerProvider or "
                            f"None, got {tracer_provider!r} ({type(tracer_provider).__name__})")
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("kaygraph", __version__,
                                        tracer_provider=tracer_provider)
        # The innermost span of this listener open in each context. Beside OpenTelemetry's
        # own variable: its token tells whether an end runs in the context its start ran
        # in (where a detach is valid); one per listener, so two listeners never mix spans.
        self._open: contextvars.ContextVar[_Open | None] = contextvars.ContextVar(
            f"kaygraph_otel_{id(self)}", default=None)

    def __repr__(self) -> str:
        return f"TracingListener(tracer_provider={self.tracer_provider!r})"

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind in _STARTS:
            self._start(_STARTS[kind], event)
        elif kind in _ENDS:
            self._end(_ENDS[kind], event)
        elif kind == "attempt_failed":
            self._attempt_failed(event)
        # "interrupt" and "error" come with the step_end and run_end that record them

    def _start(self, kind: str, event: Event) -> None:
        # A run is a child of the span current where it starts, a step or item of this
        # listener's span around it: the spans of another listener on the same run (made
        # current a moment ago, for this very event) never become parents.
        outside = otel_context.get_current()
        while otel_context.get_value(_EVENT, outside) is event:
            outside = otel_context.get_value(_OUTSIDE, outside)  # type: ignore[assignment]
        parent, parent_context = self._open.get(), outside
        if parent is not None and kind != "run":
            parent_context = trace.set_span_in_context(parent.span, outside)
        span = self._tracer.start_span(f"{kind} {event.node_id}", context=parent_context,
                                       attributes=_attributes(event))
        entry = _Open(span, kind, event, parent)
        entry.token = self._open.set(entry)
        entry.outside = outside
        current = trace.set_span_in_context(span, parent_context)
        current = otel_context.set_value(_OUTSIDE, outside, current)
        otel_context.attach(otel_context.set_value(_EVENT, event, current))

    def _find(self, kind: str, event: Event) -> _Open | None:
        entry = self._open.get()
        while entry is not None:
            if entry.matches(kind, event):
                return entry
            entry = entry.parent
        return None

    def _end(self, kind: str, event: Event) -> None:
        entry = self._find(kind, event)
        if entry is None:
            if kind == "item":  # an item on another process: no start, no span of its own
                step = self._find("step", event._replace(item_index=None))
                if step is not None:
                    step.span.add_event("kaygraph.item_end", _attributes(event))
            return
        # Spans opened inside this one and never ended (a listener before this one raised)
        # end with it.
        inner = self._open.get()
        while inner is not None and inner is not entry:
            self._finish(inner, event.error, None)
            inner = inner.parent
        self._finish(entry, event.error, event.action)
        assert entry.token is not None
        try:  # only in the context the start ran in (a closed async stream may not be)
            self._open.reset(entry.token)
        except (ValueError, RuntimeError):
            return
        # What was current before, not a detach: listeners end in the order they started.
        otel_context.attach(entry.outside)  # type: ignore[arg-type]

    def _finish(self, entry: _Open, error: BaseException | None, action: Any) -> None:
        span = entry.span
        if action is not None:
            span.set_attribute("kaygraph.action", str(action))
        if entry.kind != "run":
            span.set_attribute("kaygraph.attempt", entry.attempts + (not entry.gave_up))
        if isinstance(error, Interrupt):
            span.set_attribute("kaygraph.interrupted", True)
            if entry.kind == "step" and entry.path[-1] == error.node_id:  # the node that asked
                span.add_event("kaygraph.interrupt", {"kaygraph.node_id": error.node_id})
        elif isinstance(error, GeneratorExit):
            span.set_attribute("kaygraph.stopped", True)
        elif error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def _attempt_failed(self, event: Event) -> None:
        entry = self._find("step" if event.item_index is None else "item", event)
        if entry is None:
            return
        entry.attempts = event.attempt or entry.attempts + 1
        entry.gave_up = event.delay is None
        attributes: Mapping[str, Any] = {
            "kaygraph.attempt": entry.attempts,
            **(_error_attributes(event.error) if event.error is not None else {}),
            **({} if event.delay is None else {"kaygraph.retry_delay": event.delay})}
        entry.span.add_event("kaygraph.attempt_failed", attributes)
