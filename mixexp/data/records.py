"""Rows of a :class:`~mixexp.data.readers.Chunk`, and the check of each column value.

Runs in the worker processes. A bad row is described, never raised: the worker
either fails the run with the message or skips and counts the row
(``skip_bad_rows``).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from mixexp.data.readers import Chunk, first_line

MISSING = object()  # a column absent from a row (unlike None, a null value)

Reason = tuple[str, str]  # (kind for the report's counts, message)


def records(chunk: Chunk) -> Iterator[tuple[str, dict | Reason]]:
    """``(where, record)``: a dict of column values, or a :data:`Reason` when the row is bad."""
    if chunk.kind == "lines":
        return _records_from_lines(chunk)
    if chunk.kind == "arrow":
        return _records_from_arrow(chunk)
    return _records_from_objects(chunk)


def check_value(value: Any, col: str, optional: bool) -> tuple[str | None, Reason | None]:
    """``(text, None)`` for a good value, ``(None, reason)`` for a bad one."""
    if value is MISSING:
        return ("", None) if optional else (None, ("missing column", f"column {col!r} is missing"))
    if value is None:
        return ("", None) if optional else (None, ("null", f"column {col!r} is null"))
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            return None, ("invalid UTF-8", f"column {col!r} is invalid UTF-8 "
                          f"(byte 0x{value[exc.start]:02x} at offset {exc.start})")
    if not isinstance(value, str):
        return None, ("not a string", f"column {col!r} is {_type_name(value)}, expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: a JSON \ud800 escape, or bad bytes in a JSON array
        return None, ("invalid UTF-8", f"column {col!r} is invalid UTF-8 (at character {exc.start})")
    return value, None


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _records_from_lines(chunk: Chunk) -> Iterator[tuple[str, dict | Reason]]:
    data: bytes = chunk.payload
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for offset, raw in enumerate(lines):
        where = f"line {chunk.first + offset}"
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield where, ("invalid UTF-8", f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
            continue
        if chunk.fmt == "txt":
            yield where, {"text": text}
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            msg = getattr(exc, "msg", None) or first_line(exc)
            col = getattr(exc, "colno", None)
            yield where, ("invalid JSON", f"invalid JSON ({msg}{f' at column {col}' if col else ''})")
            continue
        if not isinstance(obj, dict):
            yield where, ("not a JSON object", f"not a JSON object ({_type_name(obj)})")
            continue
        yield where, obj


def _records_from_arrow(chunk: Chunk) -> Iterator[tuple[str, dict | Reason]]:
    import pyarrow as pa

    columns: dict = {}
    n = 0
    for col, arr in chunk.payload.items():
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        try:
            values = arr.to_pylist()
        except UnicodeDecodeError:  # invalid UTF-8 stored as a string: check per value
            values = arr.cast(pa.large_binary()).to_pylist()
        columns[col] = values
        n = len(values)
    cols = list(columns)
    for i in range(n):
        yield f"row {chunk.first + i}", {c: columns[c][i] for c in cols}


def _records_from_objects(chunk: Chunk) -> Iterator[tuple[str, dict | Reason]]:
    for i, rec in enumerate(chunk.payload):
        where = f"row {chunk.first + i}"
        yield where, rec if rec is not False else ("not a JSON object", "not a JSON object")
