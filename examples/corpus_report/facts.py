"""Per-file facts for corpus_report: stream one Python file through ``tokenize`` and ``ast``.

Plain functions with no kaygraph in them, so a worker process can import and run them.
A result is a small JSON-able dict: either facts (``lines``, ``blank``, ``comments``,
``functions``, ``classes``, ``documented``, ``module_doc``, ``longest``, ``identifiers``) or a
skip (``skip`` = ``"unreadable"``, ``"encoding"``, ``"syntax"`` or ``"error"``, and ``detail``).
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import keyword
import os
import tokenize
import warnings
from collections import Counter
from typing import Any

# Bump when the facts change, so old cache entries are never served for new code.
FACTS_VERSION = 1
BLOCK = 1 << 20  # hashing reads 1 MiB blocks: memory stays flat however big the file


def content_hash(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of the file's bytes (read in 1 MiB blocks).

    Raises OSError when the file can't be opened or read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class _Skip(Exception):
    """A file that can't be analysed: ``reason`` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _stream(path: str, digest: Any, keep: list[str] | None) -> dict:
    """Tokenize the file line by line; return the token facts.

    Each raw line is added to ``digest`` (so the cache key is the hash of exactly the bytes
    analysed) and, when ``keep`` is a list, its decoded text is appended to it for ``ast``.
    """
    counts = {"lines": 0, "blank": 0, "comments": 0, "def": 0, "class": 0}
    with open(path, "rb") as f:

        def raw_readline() -> bytes:
            line = f.readline()
            if line:
                digest.update(line)
                counts["lines"] += 1
                counts["blank"] += not line.strip()
            return line

        try:
            return _tokens(raw_readline, counts, keep)
        finally:  # a skip stops reading early: hash the rest, so the cache key is whole
            for block in iter(lambda: f.read(BLOCK), b""):
                digest.update(block)


def _tokens(raw_readline: Any, counts: dict, keep: list[str] | None) -> dict:
    """Decode and tokenize the lines ``raw_readline`` returns; fill and return ``counts``."""
    names: Counter[str] = Counter()
    try:
        # Reads at most two lines for a PEP 263 cookie or a BOM; the default is UTF-8.
        encoding, first = tokenize.detect_encoding(raw_readline)
    except SyntaxError as exc:  # a bad cookie, or a first line that isn't UTF-8
        raise _Skip("encoding", str(exc)) from None
    decoder = codecs.getincrementaldecoder(encoding)()
    pending = iter(first)

    def readline() -> str:
        line = next(pending, None)
        if line is None:
            line = raw_readline()
        try:
            text = decoder.decode(line, final=not line)
        except UnicodeDecodeError as exc:
            raise _Skip("encoding", f"not valid {encoding}: line {counts['lines']}") from exc
        if keep is not None:
            keep.append(text)
        return text

    try:
        for tok in tokenize.generate_tokens(readline):
            if tok.type == tokenize.NAME:
                if not keyword.iskeyword(tok.string):
                    names[tok.string] += 1
                elif tok.string in ("def", "class"):
                    counts[tok.string] += 1
            elif tok.type == tokenize.COMMENT:
                counts["comments"] += 1
    except (SyntaxError, tokenize.TokenError) as exc:
        raise _Skip("syntax", f"{type(exc).__name__}: {exc}") from None
    counts["identifiers"] = dict(names.most_common())
    return counts


def _has_docstring(node: ast.AST) -> bool:
    body = getattr(node, "body", None)
    return bool(
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )


def _walk(body: list[ast.stmt], prefix: str, acc: dict) -> None:
    """Count defs in a statement list; defs only live in statement bodies, so skip expressions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            is_class = isinstance(node, ast.ClassDef)
            acc["classes" if is_class else "functions"] += 1
            acc["documented"] += _has_docstring(node)
            name = prefix + node.name
            if not is_class:
                length = node.end_lineno - node.lineno + 1
                if acc["longest"] is None or length > acc["longest"]["length"]:
                    acc["longest"] = {"name": name, "line": node.lineno, "length": length}
            _walk(node.body, name + ("." if is_class else ".<locals>."), acc)
            continue
        for field in ("body", "orelse", "finalbody"):
            sub = getattr(node, field, None)
            if isinstance(sub, list):
                _walk(sub, prefix, acc)
        for part in [*getattr(node, "handlers", ()), *getattr(node, "cases", ())]:
            _walk(part.body, prefix, acc)


def analyse(path: str, parse: bool = True) -> tuple[str, dict]:
    """Analyse one file; return ``(content_hash, facts_or_skip)``.

    ``parse=True``: stream the tokens, then ``ast.parse`` the lines kept on the way (the only
    point where one whole file is in memory) for functions, classes, docstrings and the
    longest function. ``parse=False`` (files over the size limit): tokens only, so memory stays
    flat; functions and classes are counted from ``def``/``class`` keywords, and docstrings and
    the longest function are ``None``. Raises OSError when the file can't be read.
    """
    digest = hashlib.sha256()
    keep: list[str] | None = [] if parse else None
    try:
        with warnings.catch_warnings():  # test files are full of deliberate SyntaxWarnings
            warnings.simplefilter("ignore")
            facts = _stream(path, digest, keep)
            if not parse:
                facts.update(functions=facts.pop("def"), classes=facts.pop("class"))
                facts.update(documented=None, module_doc=None, longest=None)
                return digest.hexdigest(), facts
            tree = ast.parse("".join(keep))
    except _Skip as skip:
        return digest.hexdigest(), {"skip": skip.reason, "detail": skip.detail}
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return digest.hexdigest(), {"skip": "syntax", "detail": f"{type(exc).__name__}: {exc}"}
    del keep
    acc = {"functions": 0, "classes": 0, "documented": 0, "longest": None}
    _walk(tree.body, "", acc)
    del facts["def"], facts["class"]
    return digest.hexdigest(), {**facts, **acc, "module_doc": _has_docstring(tree)}
