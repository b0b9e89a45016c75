"""Input side of preprocessing: find the input files and stream them as chunks of rows.

Every format is streamed so memory stays bounded on inputs larger than RAM:
parquet in record batches and CSV with pyarrow's streaming reader, JSON lines and
text in byte blocks, JSON arrays object by object. Runs in the main process;
chunks go to the workers (:mod:`mixexp.data.workers`), which decode the rows.

Bad input (missing file, unknown format, missing column, unreadable file)
raises :class:`PreprocessError` with a one-line message.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from mixexp.data import handlers as H
from mixexp.data.json_array import JSONArrayError, iter_json_array, starts_with_array
from mixexp.data.tokenizers import first_line  # also imported from here by records, preprocess

FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".txt": "txt",
}
CHUNK_ROWS = 512  # rows per unit of work (parquet, csv, json arrays)
CHUNK_BYTES = 1 << 20  # bytes per unit of work (jsonl, txt); read block size for json, csv
MAX_EXAMPLES = 5  # skipped-row messages kept for the report
SKIP_HINT = " (skip_bad_rows=true skips bad rows)"


class PreprocessError(Exception):
    """Bad input or options; ``str(err)`` is one readable line."""


@dataclass
class Chunk:
    """One unit of work: a block of rows still in their input encoding."""

    kind: str  # "lines" (bytes) | "arrow" ({column: array}) | "objects" (list of dicts)
    path: str
    first: int  # first line (lines) or row (others), 1-based
    fmt: str
    payload: Any
    units: float = 0.0  # progress units (bytes of input)


@dataclass
class MalformedCsvRows:
    """CSV rows pyarrow's reader dropped under ``skip_bad_rows`` (they never reach a worker)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------
# Discovery and dispatch


def _format_of(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def discover_inputs(input_path: str) -> list[tuple[str, str]]:
    """``[(file, format)]`` for a file or a directory (recursive, sorted)."""
    path = os.fspath(input_path)
    if not os.path.exists(path):
        raise PreprocessError(f"input not found: {path}")
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                fmt = _format_of(name)
                if fmt and not name.startswith("."):
                    found.append((os.path.join(root, name), fmt))
        if not found:
            raise PreprocessError(
                f"no input files ({', '.join(sorted(set(FORMATS)))}) in directory: {path}"
            )
        return found
    fmt = _format_of(path)
    if fmt is None:
        raise PreprocessError(
            f"unsupported input format {os.path.splitext(path)[1] or '(none)'!r}: {path} "
            "(expected .parquet, .jsonl, .json, .csv, .txt or a directory)"
        )
    return [(path, fmt)]


def iter_chunks(
    files: Sequence[tuple[str, str]],
    spec: H.HandlerSpec,
    skip_bad_rows: bool,
    chunk_rows: int,
    malformed_csv: MalformedCsvRows,
) -> Iterator[Chunk]:
    """The chunks of every file, in order."""
    for path, fmt in files:
        try:
            if fmt in ("jsonl", "txt"):
                yield from _iter_line_chunks(path, fmt, spec)
            elif fmt == "json":
                yield from _iter_json_chunks(path, spec, chunk_rows)
            elif fmt == "parquet":
                yield from _iter_parquet_chunks(path, spec, chunk_rows)
            else:
                yield from _iter_csv_chunks(path, spec, chunk_rows, skip_bad_rows, malformed_csv)
        except OSError as exc:
            raise PreprocessError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from None


def _check_columns(path: str, available: Sequence[str], spec: H.HandlerSpec) -> None:
    for f in spec.fields:
        if f in spec.optional_fields:
            continue
        col = spec.column_for(f)
        if col not in available:
            listed = ", ".join(repr(c) for c in available) or "none"
            raise PreprocessError(f"column {col!r} not found in {path}; columns: {listed}")


def _needed_columns(spec: H.HandlerSpec, available: Sequence[str]) -> list[str]:
    cols = []
    for f in spec.fields:
        col = spec.column_for(f)
        if col in available and col not in cols:
            cols.append(col)
    return cols


def _arrow_error(path: str, exc: BaseException) -> PreprocessError:
    return PreprocessError(f"cannot read {path}: {first_line(exc)}")


# ----------------------------------------------------------------------------
# JSON lines and text: byte blocks cut at line ends


def _iter_line_chunks(path: str, fmt: str, spec: H.HandlerSpec) -> Iterator[Chunk]:
    if fmt == "txt":
        _check_columns(path, ["text"], spec)
    else:
        found = _jsonl_columns(path)
        if found is not None:  # no object line at all: rows report themselves
            _check_columns(path, found, spec)
    line = 1
    leftover = b""
    with open(path, "rb") as f:
        first = True
        while True:
            block = f.read(CHUNK_BYTES)
            eof = not block
            data = leftover + block
            if first and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            first = False
            if eof:
                if data:
                    yield Chunk("lines", path, line, fmt, data, len(data))
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                leftover = data
                continue
            body, leftover = data[: cut + 1], data[cut + 1 :]
            yield Chunk("lines", path, line, fmt, body, len(body))
            line += body.count(b"\n")


def _jsonl_columns(path: str) -> list[str] | None:
    """Keys of the first parsable JSON object line (None when none is found)."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i >= 1000:
                break
            if i == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                return list(obj)
    return None


# ----------------------------------------------------------------------------
# JSON: an array streamed element by element, anything else read as JSON lines


def _iter_json_chunks(path: str, spec: H.HandlerSpec, chunk_rows: int) -> Iterator[Chunk]:
    if not starts_with_array(path):
        yield from _iter_line_chunks(path, "jsonl", spec)
        return
    checked = False
    records: list = []
    row = 1
    last_tell = 0
    cols = [spec.column_for(f) for f in spec.fields]
    try:
        for value, tell in iter_json_array(path, CHUNK_BYTES):
            if not checked and isinstance(value, dict):
                _check_columns(path, list(value), spec)
                checked = True
            # Only the needed columns travel to the workers; False marks a non-object element.
            records.append({c: value[c] for c in cols if c in value} if isinstance(value, dict) else False)
            if len(records) >= chunk_rows:
                yield Chunk("objects", path, row, "json", records, tell - last_tell)
                row += len(records)
                records, last_tell = [], tell
    except JSONArrayError as exc:
        raise PreprocessError(str(exc)) from None
    if records:
        yield Chunk("objects", path, row, "json", records, os.path.getsize(path) - last_tell)


# ----------------------------------------------------------------------------
# Parquet and CSV: pyarrow record batches of the needed columns


def _iter_parquet_chunks(path: str, spec: H.HandlerSpec, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise _arrow_error(path, exc) from None
    schema = pf.schema_arrow
    _check_columns(path, schema.names, spec)
    cols = _needed_columns(spec, schema.names)
    for col in cols:
        _check_arrow_type(path, col, schema.field(col).type)
    total_rows = max(pf.metadata.num_rows, 1)
    size = os.path.getsize(path)
    row = 1
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
            arrays = {c: batch.column(c) for c in cols}
            yield Chunk("arrow", path, row, "parquet", arrays, size * batch.num_rows / total_rows)
            row += batch.num_rows
    except PreprocessError:
        raise
    except Exception as exc:
        raise _arrow_error(path, exc) from None


def _check_arrow_type(path: str, col: str, typ) -> None:
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    ok = (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
        or pa.types.is_null(typ)
        # view types exist only in newer pyarrow
        or getattr(pa.types, "is_string_view", lambda t: False)(typ)
        or getattr(pa.types, "is_binary_view", lambda t: False)(typ)
    )
    if not ok:
        raise PreprocessError(f"{path}: column {col!r} has type {typ}, expected string")


def _iter_csv_chunks(
    path: str, spec: H.HandlerSpec, chunk_rows: int, skip_bad_rows: bool, malformed: MalformedCsvRows
) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "r", encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader(f), [])
    _check_columns(path, header, spec)
    cols = _needed_columns(spec, header)
    failed_row = None  # the malformed row pyarrow was told to fail on (skip_bad_rows off)

    def on_invalid(row) -> str:
        nonlocal failed_row
        if skip_bad_rows:
            malformed.count += 1
            if len(malformed.examples) < MAX_EXAMPLES:
                malformed.examples.append(_malformed_csv_row(path, row))
            return "skip"
        failed_row = row
        return "error"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CHUNK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            # binary, not string: invalid UTF-8 is then reported per row by the workers
            convert_options=pacsv.ConvertOptions(
                include_columns=cols, column_types={c: pa.binary() for c in cols}
            ),
        )
    except Exception as exc:
        raise _csv_error(path, exc, failed_row) from None
    row = 1
    try:
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                arrays = {c: part.column(c) for c in cols}
                units = sum(a.nbytes for a in arrays.values()) + part.num_rows
                yield Chunk("arrow", path, row, "csv", arrays, units)
                row += part.num_rows
    except PreprocessError:
        raise
    except Exception as exc:
        raise _csv_error(path, exc, failed_row) from None


def _malformed_csv_row(path: str, row) -> str:
    where = f"line {row.number}" if row.number is not None else "a row"
    return f"{path}: {where}: expected {row.expected_columns} columns, got {row.actual_columns}"


def _csv_error(path: str, exc: BaseException, failed_row) -> PreprocessError:
    # a malformed row made pyarrow fail: name that row, like bad rows in other formats
    if failed_row is not None:
        return PreprocessError(_malformed_csv_row(path, failed_row) + SKIP_HINT)
    return _arrow_error(path, exc)
