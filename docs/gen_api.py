"""Generate docs/api.md from the docstrings of the public names in kaygraph.

Run from anywhere:  python docs/gen_api.py          (rewrites docs/api.md)
                    python docs/gen_api.py --check  (exit 1 if docs/api.md is out of date)

Standard library only (inspect), so the reference needs nothing beyond the core itself; the
output is plain Markdown that reads the same on a code host and in a static site generator.
The text must be identical on every supported Python (3.10 to 3.13): tests/test_docs.py
compares it with the committed file on each of them.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
REGENERATE = "python docs/gen_api.py"
ROLE = re.compile(r":(?:class|meth|func|attr):`~?([\w.]+)`")
LITERAL = re.compile(r"``([^`]+)``")


class _Name:
    """Stands in for a default value whose repr is not stable (a class, a function)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _stable_default(value: object) -> object:
    if inspect.isclass(value) or inspect.isroutine(value):
        return _Name(value.__qualname__)
    if isinstance(value, tuple) and any(inspect.isclass(v) for v in value):
        inner = ", ".join(repr(_stable_default(v)) for v in value)
        return _Name(f"({inner})")
    return value


def signature(obj: object, drop_first: bool = False) -> str:
    """Return `obj`'s signature as text, e.g. "(max_retries=1, wait=0)", or "(...)"."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    params = [_stable_param(p) for p in params]
    ret = _source_text(sig.return_annotation)
    return str(sig.replace(parameters=params, return_annotation=ret))


def _wrap(head: str, width: int = 88) -> str:
    """One parameter per line when ``head`` ("name(params) -> ret") is wider than ``width``."""
    if len(head) <= width:
        return head
    start = head.index("(")
    depth, parts, current = 0, [], ""
    for i, ch in enumerate(head[start + 1 :], start + 1):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                parts.append(current.strip())
                inner = "".join(f"\n    {part}," for part in parts if part)
                return f"{head[:start]}({inner}\n){head[i + 1 :]}"
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return head


def _source_text(annotation: object) -> object:
    """Postponed annotations (strings, ForwardRefs) as their source text, unquoted."""
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        return _Name(annotation.replace("cf.", "concurrent.futures."))
    return annotation


def _stable_param(p: inspect.Parameter) -> inspect.Parameter:
    if p.annotation is not p.empty:
        p = p.replace(annotation=_source_text(p.annotation))
    if p.default is not p.empty:
        p = p.replace(default=_stable_default(p.default))
    return p


def _doc(obj: object) -> str:
    """The docstring as Markdown: reST roles become links, ``code`` becomes `code`."""
    text = inspect.getdoc(obj) or "(no docstring)"
    text = ROLE.sub(lambda m: f"[`{m.group(1)}`](#{m.group(1).lower().replace('.', '')})", text)
    return LITERAL.sub(r"`\1`", text)


def _members(cls: type) -> list[tuple[str, str, str]]:
    """(name, signature, docstring) of the public methods and properties `cls` defines itself."""
    out = []
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            out.append((name, " (property)", _doc(raw)))
        elif isinstance(raw, staticmethod):
            out.append((name, signature(raw.__func__), _doc(raw.__func__)))
        elif isinstance(raw, classmethod):
            out.append((name, signature(getattr(cls, name)), _doc(raw.__func__)))
        elif inspect.isfunction(raw):
            out.append((name, signature(raw, drop_first=True), _doc(raw)))
    return out


def _bases(cls: type) -> str:
    # typing.Generic is how a class takes type parameters, not a base worth a link.
    names = [b.__name__ for b in cls.__bases__ if b.__module__ not in ("builtins", "typing")]
    if not names:
        return ""
    return "Bases: " + ", ".join(f"[`{n}`](#{n.lower()})" for n in names) + ".\n\n"


def render() -> str:
    """Return the full text of docs/api.md for the kaygraph importable right now."""
    sys.path.insert(0, str(ROOT))
    try:
        import kaygraph
    finally:
        sys.path.pop(0)

    names = list(kaygraph.__all__)
    lines = [
        "# API reference",
        "",
        f"<!-- Generated from the docstrings in kaygraph/__init__.py: run `{REGENERATE}`;"
        " do not edit by hand. -->",
        "",
        "Every public name of `kaygraph`, in the order of `kaygraph.__all__`. Each class lists",
        "the methods it defines itself; the ones it inherits are documented on its bases.",
        "In signatures, `Shared` is `dict[str, Any]` (the shared store) and `Action` is",
        "`str | None`. The guides explain how the pieces fit: start at the",
        "[docs index](index.md).",
        "",
        " · ".join(f"[`{n}`](#{n.lower()})" for n in names),
        "",
    ]
    seen: dict[int, str] = {}
    for name in names:
        obj = getattr(kaygraph, name)
        lines += [f"## `{name}`", ""]
        if id(obj) in seen:
            first = seen[id(obj)]
            lines += [
                f"Alias of [`{first}`](#{first.lower()}): the same object "
                f"(`{name} is {first}`).",
                "",
            ]
            continue
        seen[id(obj)] = name
        if inspect.isclass(obj):
            head = f"class {name}{signature(obj)}".removesuffix(" -> None")
        else:
            head = f"def {name}{signature(obj)}"
        lines += ["```text", _wrap(head), "```", ""]
        if inspect.isclass(obj):
            lines += [_bases(obj) + _doc(obj), ""]
            for member, sig, doc in _members(obj):
                lines += [f"### `{name}.{member}`", "", "```text", _wrap(member + sig), "```"]
                lines += ["", doc, ""]
        else:
            lines += [_doc(obj), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = API_MD.read_text(encoding="utf-8") if API_MD.exists() else ""
        if current != text:
            print(f"docs/api.md is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    API_MD.write_text(text, encoding="utf-8")
    print(f"wrote {API_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
