"""Rendering of benchmark results: a plain-text table for the terminal, Markdown for the docs.

Both read the same JSON-shaped dict that `run.py --json` writes, so a saved run can be rendered
again later (`run.py --from-json FILE --markdown-into docs/performance.md`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOTES = Path(__file__).with_name("notes.md")  # the prose rendered after the tables
START_MARKER = "<!-- benchmark-table:start -->"
END_MARKER = "<!-- benchmark-table:end -->"
# The ratio columns, shown in a workload's table when one of its rows has that ratio.
RATIOS = (("vs_floor", "x floor"), ("vs_pocketflow", "x PocketFlow"),
          ("vs_langgraph", "x LangGraph"))


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2g}x" if abs(value) < 0.1 else f"{value:.2f}x"  # 0.0013x, not 0.00x


def _extra(row: dict[str, Any]) -> str:
    parts = []
    extra = row.get("extra", {})
    if "efficiency" in extra:
        parts.append(f"efficiency {extra['efficiency']:.2f}")
    if "peak_mib" in extra:
        parts.append(f"peak {extra['peak_mib']:.1f} MiB")
    if "seconds_traced" in extra:
        parts.append(f"{extra['seconds_traced']:.1f} s under tracemalloc")
    if len(row.get("samples", [])) > 1:
        lo, hi = min(row["samples"]), max(row["samples"])
        parts.append(f"range {_num(lo)}-{_num(hi)}")
    if row.get("note"):
        parts.append(row["note"])
    return ", ".join(parts)


def _ratio_keys(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The ratio columns a table of `rows` needs: those that some row has."""
    return [(key, title) for key, title in RATIOS if any(r.get(key) is not None for r in rows)]


def _headers(keys: list[tuple[str, str]]) -> tuple[str, ...]:
    return ("framework", "median", *(title for _, title in keys), "notes")


def _cells(row: dict[str, Any], keys: list[tuple[str, str]]) -> tuple[str, ...]:
    if row["status"] != "ok":
        return (row["label"], row["status"], *("" for _ in keys), row.get("note", ""))
    median = f"{_num(row['value'])} {row['unit']}"
    return (row["label"], median, *(_ratio(row.get(key)) for key, _ in keys), _extra(row))


def _verdict(target: dict[str, Any]) -> str:
    met = target["met"]
    return "n/a" if met is None else ("met" if met else "MISSED")


def _target_cells(t: dict[str, Any]) -> tuple[str, ...]:
    value = "" if t["value"] is None else f"{t['value']:.3g}"
    return (t["name"], value, f"{t['op']} {t['limit']:.3g}", _verdict(t), t["detail"])


def _machine_line(meta: dict[str, Any]) -> str:
    peers = ", ".join(f"{k} {v}" for k, v in meta["peers"].items())
    load = meta.get("load_average_at_start")
    load_text = f", load average at start {load[0]:.2f}" if load else ""
    commit = f" (kaygraph at {meta['kaygraph_commit']})" if meta.get("kaygraph_commit") else ""
    clock = " (CPU-time clock for step, batch, scaling)" if meta.get("clock") == "cpu" else ""
    return (f"{meta['date_utc']}, {meta['mode']} run{clock}{commit}: {meta['cores']} cores, "
            f"{meta['cpu']}, {meta['python']}{load_text}; peers: {peers}")


def _text_table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def render_text(results: dict[str, Any]) -> str:
    """The whole run as a plain-text report for the terminal."""
    lines = [_machine_line(results["meta"]), ""]
    for wl in results["workloads"]:
        lines.append(wl["title"])
        cases: dict[str, list[dict[str, Any]]] = {}
        for row in wl["rows"]:
            cases.setdefault(row["case"], []).append(row)
        keys = _ratio_keys(wl["rows"])
        for case, case_rows in cases.items():
            lines.append(f" {case}")
            lines += _text_table([_headers(keys)] + [_cells(r, keys) for r in case_rows])
        lines.append("")
    lines.append("Targets (report only: never a failure)")
    targets = [t for wl in results["workloads"] for t in wl["targets"]]
    if targets:
        lines += _text_table([("target", "value", "bar", "verdict", "detail")]
                             + [_target_cells(t) for t in targets])
    return "\n".join(lines)


def _md_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(results: dict[str, Any]) -> str:
    """The whole run as Markdown: machine line, one table per workload, targets, notes.md."""
    meta = results["meta"]
    out = [f"Measured {_machine_line(meta)}.", ""]
    cores = meta.get("cores") or 1
    loads = [x[0] for x in (meta.get("load_average_at_start"), meta.get("load_average_at_end"))
             if x]
    if loads and max(loads) > cores / 2:
        out += [f"**Noisy run:** the machine was busy (load average up to {max(loads):.1f} on "
                f"{cores} cores), so the timings vary between rounds; see the ranges.", ""]
    if meta.get("note"):
        out += [f"**Note:** {meta['note']}", ""]
    out.append("Reproduce with `python benchmarks/run.py --json /tmp/bench.json "
               "--markdown-into docs/performance.md`.")
    out.append("")
    for wl in results["workloads"]:
        out += [f"### {wl['title']}", "", wl["measures"], ""]
        keys = _ratio_keys(wl["rows"])
        out.append(_md_row(("case", *_headers(keys))))
        out.append(_md_row(("---",) * (len(keys) + 4)))
        for row in wl["rows"]:
            out.append(_md_row((row["case"], *_cells(row, keys))))
        out.append("")
    out += ["### Targets", ""]
    out.append(_md_row(("target", "value", "bar", "verdict", "detail")))
    out.append(_md_row(("---",) * 5))
    for wl in results["workloads"]:
        for t in wl["targets"]:
            out.append(_md_row(_target_cells(t)))
    out += ["", NOTES.read_text().strip()]
    return "\n".join(out)


def write_between_markers(path: Path, markdown: str | None) -> None:
    """Replace what lies between the two benchmark-table markers of `path` with `markdown`.

    Everything outside the markers is kept. A missing file is created with a heading and the
    markers; a file without both markers raises ValueError naming the path. With `markdown`
    None, only checks (and creates) the file.
    """
    if not path.exists():
        path.write_text(f"# Performance\n\n{START_MARKER}\n{END_MARKER}\n")
    text = path.read_text()
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"{path}: needs {START_MARKER} followed by {END_MARKER}")
    if markdown is not None:
        head = text[: start + len(START_MARKER)]
        path.write_text(f"{head}\n{markdown}\n{text[end:]}")
