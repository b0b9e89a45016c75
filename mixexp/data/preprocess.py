"""Raw text / instruction data -> Megatron indexed datasets (``.bin`` + ``.idx``).

    preprocess(
        input_path, output_prefix, *,
        handler="pretrain",           # "pretrain" | "alpaca"
        tokenizer_kind="mixtral",     # "mixtral" | "sentencepiece" | "hf"
        tokenizer_path=None,
        json_keys=("text",),          # pretrain: columns to tokenize, one output each
        columns=None,                 # {field: source column}, e.g. {"output": "answer"}
        append_eod=True,              # EOD (== EOS) after every document / response
        add_bos=True,                 # BOS before every document / prompt
        workers=1,                    # tokenizer processes; same bytes for any N
        seq_length=None,              # alpaca: drop longer samples; pack length
        pack=False,                   # alpaca: pack samples into seq_length rows
        prompt_template="mixtral",    # alpaca: "mixtral" | "alpaca" | "plain" | format string
        skip_bad_rows=False,          # skip (and count) bad rows instead of failing
        show_progress=True,           # rich progress bar on stderr
    ) -> dict

Input: a ``.parquet``, ``.jsonl`` (``.ndjson``), ``.json`` (an array of objects, or
JSON lines), ``.csv`` or ``.txt`` (one document per non-blank line, column
``text``) file, or a directory of them (recursively, in sorted order). Every format
is streamed: parquet in record batches (pyarrow), CSV with pyarrow's streaming
reader, JSON lines and text in byte blocks, JSON arrays object by object, so
memory stays bounded on inputs larger than RAM.

Outputs (Megatron-LM / MindSpeed-LLM names, see :mod:`mixexp.data.indexed`):
  pretrain  ``{PREFIX}_{key}_document.bin/.idx`` per key (uint16 tokens when the
            vocabulary has fewer than 65500 entries, else int32).
  alpaca    ``{PREFIX}_packed_input_ids_document``, ``..._attention_mask_document``,
            ``..._labels_document`` (int32; labels -100 on the prompt and padding).
Files are written under temporary names and renamed when complete.

Returns a report dict: ``documents``, ``tokens``, ``rows``, ``skipped``
(bad rows skipped), ``skipped_reasons``, ``skipped_examples``, ``empty`` (rows
with no tokens, not written), ``too_long`` (alpaca samples over ``seq_length``,
not written), ``packs``, ``padding_tokens``, ``seconds``, ``rows_per_sec``,
``tokens_per_sec``, ``outputs`` ({key: prefix}), ``output_paths`` and the options.

Bad input raises :class:`PreprocessError` with a one-line message; the
``preprocess.py`` command prints it on stderr and exits with code 2.

:func:`ensure_preprocessed` runs :func:`preprocess` once and reuses the outputs
while the input files and options are unchanged (for the training side).

Command line (``preprocess.py`` at the repository root, ``conf/preprocess.yaml``)::

    python preprocess.py input=PATH output_prefix=PREFIX [workers=2] [skip_bad_rows=true]
        [preprocess_handler=alpaca | handler=alpaca] [handler.columns={output: answer}]
        [preprocess_tokenizer=hf tokenizer.path=DIR | tokenizer=/path/tokenizer.model]
        [pack=true seq_length=4096] [add_bos=false] [append_eod=false]

Worker processes are forked (``MIXEXP_PREPROCESS_START_METHOD`` overrides) before
any output is opened; each one tokenizes whole chunks of rows, and results are
written in input order, so the bytes do not depend on ``workers``.
"""

from __future__ import annotations

import codecs
import collections
import csv
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mixexp.data import handlers as H
from mixexp.data import indexed
from mixexp.data.tokenizers import TokenizerError, load_tokenizer

FORMATS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".txt": "txt",
}
CHUNK_ROWS = 512  # rows per unit of work (parquet, csv, json arrays)
CHUNK_BYTES = 1 << 20  # bytes per unit of work (jsonl, txt)
MAX_EXAMPLES = 5  # skipped-row messages kept for the report
SKIP_HINT = " (skip_bad_rows=true skips bad rows)"
_MISSING = object()
_BOM = b"\xef\xbb\xbf"


class PreprocessError(Exception):
    """Bad input or options; ``str(err)`` is one readable line."""


# ----------------------------------------------------------------------------
# Input discovery and streaming (main process)


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
                if fmt and not name.startswith(".") and not name.endswith(".preprocess.json"):
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
    return PreprocessError(f"cannot read {path}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@dataclass
class _Chunk:
    kind: str  # "lines" | "arrow" | "objects"
    path: str
    first: int  # first line (lines) or row (others), 1-based
    fmt: str
    payload: Any
    units: float = 0.0  # progress units (bytes of input)


def _iter_line_chunks(path: str, fmt: str, spec: H.HandlerSpec, chunk_bytes: int) -> Iterator[_Chunk]:
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
            block = f.read(chunk_bytes)
            eof = not block
            data = leftover + block
            if first and data.startswith(_BOM):
                data = data[len(_BOM) :]
            first = False
            if eof:
                if data:
                    yield _Chunk("lines", path, line, fmt, data, len(data))
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                leftover = data
                continue
            body, leftover = data[: cut + 1], data[cut + 1 :]
            yield _Chunk("lines", path, line, fmt, body, len(body))
            line += body.count(b"\n")


def _jsonl_columns(path: str) -> list[str] | None:
    """Keys of the first parsable JSON object line (None when none is found)."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i >= 1000:
                break
            if i == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                return list(obj)
    return None


def _json_is_array(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
        while head:
            stripped = head.lstrip(_BOM).lstrip()
            if stripped:
                return stripped[:1] == b"["
            head = f.read(4096)
    return False


def _iter_json_array(path: str) -> Iterator[tuple[Any, int]]:
    """Stream the elements of a top-level JSON array: ``(value, bytes_read_so_far)``.

    Decodes with ``surrogateescape`` so invalid UTF-8 surfaces as lone surrogates
    in the affected strings (reported per row) instead of failing the file.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    with open(path, "rb") as f:
        buf, pos, eof = "", 0, False

        def fill() -> None:
            nonlocal buf, pos, eof
            data = f.read(CHUNK_BYTES)
            eof = not data
            buf = buf[pos:] + utf8.decode(data, final=eof)
            pos = 0

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf):
                    return True
                if eof:
                    return False
                fill()

        if not skip_ws() or buf[pos] != "[":
            raise PreprocessError(f"{path}: invalid JSON: expected an array or JSON lines")
        pos += 1
        index = 0
        while True:
            if not skip_ws():
                raise PreprocessError(f"{path}: invalid JSON: the array is not closed")
            if buf[pos] == "]":
                return
            if index:
                if buf[pos] != ",":
                    raise PreprocessError(f"{path}: invalid JSON after element {index}: expected ',' or ']'")
                pos += 1
                if not skip_ws():
                    raise PreprocessError(f"{path}: invalid JSON: the array is not closed")
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        raise PreprocessError(
                            f"{path}: invalid JSON in element {index + 1}: {exc.msg}"
                        ) from None
                    fill()
                    continue
                if end == len(buf) and not eof:  # a number may continue in the next block
                    fill()
                    continue
                break
            pos = end
            index += 1
            yield value, f.tell()


def _iter_json_chunks(path: str, spec: H.HandlerSpec, chunk_rows: int) -> Iterator[_Chunk]:
    if not _json_is_array(path):
        yield from _iter_line_chunks(path, "jsonl", spec, CHUNK_BYTES)
        return
    checked = False
    records: list = []
    row = 1
    last_tell = 0
    cols = [spec.column_for(f) for f in spec.fields]
    for value, tell in _iter_json_array(path):
        if not checked and isinstance(value, dict):
            _check_columns(path, list(value), spec)
            checked = True
        records.append({c: value[c] for c in cols if c in value} if isinstance(value, dict) else False)
        if len(records) >= chunk_rows:
            yield _Chunk("objects", path, row, "json", records, tell - last_tell)
            row += len(records)
            records, last_tell = [], tell
    if records:
        yield _Chunk("objects", path, row, "json", records, os.path.getsize(path) - last_tell)


def _iter_parquet_chunks(path: str, spec: H.HandlerSpec, chunk_rows: int) -> Iterator[_Chunk]:
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
            yield _Chunk("arrow", path, row, "parquet", arrays, size * batch.num_rows / total_rows)
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
        or getattr(pa.types, "is_string_view", lambda t: False)(typ)
        or getattr(pa.types, "is_binary_view", lambda t: False)(typ)
    )
    if not ok:
        raise PreprocessError(f"{path}: column {col!r} has type {typ}, expected string")


def _iter_csv_chunks(path: str, spec: H.HandlerSpec, chunk_rows: int, skip_bad_rows: bool, stats: dict) -> Iterator[_Chunk]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "r", encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader(f), [])
    _check_columns(path, header, spec)
    cols = _needed_columns(spec, header)
    invalid: list = []

    def on_invalid(row) -> str:
        invalid.append(row)
        if skip_bad_rows:
            stats["csv_invalid"] = stats.get("csv_invalid", 0) + 1
            if len(stats.setdefault("csv_examples", [])) < MAX_EXAMPLES:
                where = f"line {row.number}" if row.number is not None else "a row"
                stats["csv_examples"].append(
                    f"{path}: {where}: expected {row.expected_columns} columns, got {row.actual_columns}"
                )
            return "skip"
        return "error"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CHUNK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=cols, column_types={c: pa.binary() for c in cols}
            ),
        )
    except Exception as exc:
        raise _csv_error(path, exc, invalid) from None
    row = 1
    try:
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                part = batch.slice(start, chunk_rows)
                arrays = {c: part.column(c) for c in cols}
                units = sum(a.nbytes for a in arrays.values()) + part.num_rows
                yield _Chunk("arrow", path, row, "csv", arrays, units)
                row += part.num_rows
    except PreprocessError:
        raise
    except Exception as exc:
        raise _csv_error(path, exc, invalid) from None


def _csv_error(path: str, exc: BaseException, invalid: list) -> PreprocessError:
    if invalid:
        bad = invalid[-1]
        where = f"line {bad.number}" if bad.number is not None else "a row"
        return PreprocessError(
            f"{path}: {where}: expected {bad.expected_columns} columns, "
            f"got {bad.actual_columns}{SKIP_HINT}"
        )
    return _arrow_error(path, exc)


def _iter_chunks(
    files: Sequence[tuple[str, str]], spec: H.HandlerSpec, skip_bad_rows: bool, chunk_rows: int, stats: dict
) -> Iterator[_Chunk]:
    for path, fmt in files:
        try:
            if fmt in ("jsonl", "txt"):
                yield from _iter_line_chunks(path, fmt, spec, CHUNK_BYTES)
            elif fmt == "json":
                yield from _iter_json_chunks(path, spec, chunk_rows)
            elif fmt == "parquet":
                yield from _iter_parquet_chunks(path, spec, chunk_rows)
            else:
                yield from _iter_csv_chunks(path, spec, chunk_rows, skip_bad_rows, stats)
        except OSError as exc:
            raise PreprocessError(f"cannot read {path}: {exc.strerror or _first_line(exc)}") from None


# ----------------------------------------------------------------------------
# Row validation and tokenization (worker processes, or in-process for workers=1)


@dataclass
class _ChunkResult:
    rows: int = 0
    bad: int = 0
    reasons: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    error: str | None = None
    tokenized: H.Tokenized | None = None
    units: float = 0.0


_WORKER: dict = {}


def _init_worker(spec: H.HandlerSpec, tokenizer_kind: str, tokenizer_path: str | None,
                 skip_bad_rows: bool, tokenizer=None, in_process: bool = False) -> None:
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.clear()
    _WORKER.update(
        spec=spec,
        tokenizer=tokenizer if tokenizer is not None else load_tokenizer(tokenizer_kind, tokenizer_path),
        skip=skip_bad_rows,
    )


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


def _check_value(value: Any, col: str, optional: bool) -> tuple[str | None, tuple[str, str] | None]:
    """``(text, None)`` for a good value, ``(None, (kind, reason))`` for a bad one."""
    if value is _MISSING:
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
    except UnicodeEncodeError as exc:
        return None, ("invalid UTF-8", f"column {col!r} is invalid UTF-8 (at character {exc.start})")
    return value, None


def _records_from_lines(chunk: _Chunk) -> Iterator[tuple[str, Any]]:
    """``(where, record)``: record is a dict, or ``(kind, reason)`` when the line is bad."""
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
            msg = getattr(exc, "msg", None) or _first_line(exc)
            col = getattr(exc, "colno", None)
            yield where, ("invalid JSON", f"invalid JSON ({msg}{f' at column {col}' if col else ''})")
            continue
        if not isinstance(obj, dict):
            yield where, ("not a JSON object", f"not a JSON object ({_type_name(obj)})")
            continue
        yield where, obj


def _records_from_arrow(chunk: _Chunk) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa

    columns: dict = {}
    n = 0
    for col, arr in chunk.payload.items():
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type) or pa.types.is_null(arr.type)):
            try:
                values = arr.to_pylist()
            except UnicodeDecodeError:  # invalid UTF-8 stored as a string: check per value
                values = arr.cast(pa.large_binary()).to_pylist()
        else:
            values = arr.to_pylist()
        columns[col] = values
        n = len(values)
    cols = list(columns)
    for i in range(n):
        yield f"row {chunk.first + i}", {c: columns[c][i] for c in cols}


def _records_from_objects(chunk: _Chunk) -> Iterator[tuple[str, Any]]:
    for i, rec in enumerate(chunk.payload):
        where = f"row {chunk.first + i}"
        yield where, rec if rec is not False else ("not a JSON object", "not a JSON object")


def _process_chunk(chunk: _Chunk) -> _ChunkResult:
    spec: H.HandlerSpec = _WORKER["spec"]
    skip: bool = _WORKER["skip"]
    fields = spec.fields
    optional = spec.optional_fields
    cols = [spec.column_for(f) for f in fields]
    if chunk.kind == "lines":
        records = _records_from_lines(chunk)
    elif chunk.kind == "arrow":
        records = _records_from_arrow(chunk)
    else:
        records = _records_from_objects(chunk)
    result = _ChunkResult(units=chunk.units)
    values: dict[str, list[str]] = {f: [] for f in fields}
    for where, rec in records:
        result.rows += 1
        reason = None
        texts = []
        if isinstance(rec, tuple):
            reason = rec
        else:
            for f, col in zip(fields, cols):
                text, reason = _check_value(rec.get(col, _MISSING), col, f in optional)
                if reason:
                    break
                texts.append(text)
        if reason:
            kind, text = reason
            message = f"{chunk.path}: {where}: {text}"
            if not skip:
                result.error = message + SKIP_HINT
                return result
            result.bad += 1
            result.reasons[kind] = result.reasons.get(kind, 0) + 1
            if len(result.examples) < MAX_EXAMPLES:
                result.examples.append(message)
            continue
        for f, text in zip(fields, texts):
            values[f].append(text)
    result.tokenized = H.tokenize(spec, _WORKER["tokenizer"], values)
    return result


# ----------------------------------------------------------------------------
# Ordered execution over a process pool


def _start_method() -> str:
    """``fork`` where available: workers start at once and never re-import ``__main__``.

    The pool is started before any input is read (no pyarrow threads exist yet).
    ``MIXEXP_PREPROCESS_START_METHOD=spawn|forkserver`` overrides it.
    """
    import multiprocessing

    method = os.environ.get("MIXEXP_PREPROCESS_START_METHOD")
    if method:
        return method
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _noop() -> int:
    return os.getpid()


def _start_pool(workers: int, initargs: tuple):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
    try:
        for f in [pool.submit(_noop) for _ in range(workers)]:  # start every worker now
            f.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool


def _run_ordered(chunks: Iterable[_Chunk], pool) -> Iterator[_ChunkResult]:
    """Results in input order; at most ``2 * workers + 2`` chunks in flight."""
    if pool is None:
        for chunk in chunks:
            yield _process_chunk(chunk)
        return
    window = 2 * pool._max_workers + 2
    pending: collections.deque = collections.deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_process_chunk, chunk))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


# ----------------------------------------------------------------------------
# Progress


class _Progress:
    def __init__(self, enabled: bool, total_units: float, label: str) -> None:
        self.enabled = enabled
        self.total = max(total_units, 1.0)
        self._progress = None
        self._task = None
        self._start = time.perf_counter()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows · {task.fields[rps]:,.0f} rows/s · {task.fields[tps]:,.0f} tokens/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=self.total, rows=0, rps=0.0, tps=0.0)

    def update(self, units: float, rows: int, tokens: int) -> None:
        if not self._progress:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=units, rows=rows, rps=rows / elapsed, tps=tokens / elapsed)

    def stop(self, complete: bool) -> None:
        if not self._progress:
            return
        if complete:
            self._progress.update(self._task, completed=self.total)
        self._progress.stop()


# ----------------------------------------------------------------------------
# The entry point


def output_prefixes(output_prefix: str, handler: str = "pretrain", json_keys: Sequence[str] = ("text",)) -> dict[str, str]:
    """``{key: prefix}`` of the datasets :func:`preprocess` writes."""
    if handler == "pretrain":
        if isinstance(json_keys, str):
            json_keys = (json_keys,)
        return {k: f"{output_prefix}_{k}_document" for k in json_keys}
    return {k: f"{output_prefix}_packed_{k}_document" for k in H.ALPACA_OUTPUT_KEYS}


def preprocess(
    input_path: str | os.PathLike,
    output_prefix: str | os.PathLike,
    *,
    handler: str = "pretrain",
    tokenizer_kind: str = "mixtral",
    tokenizer_path: str | None = None,
    json_keys: Sequence[str] = ("text",),
    columns: Mapping[str, str] | None = None,
    append_eod: bool = True,
    add_bos: bool = True,
    workers: int = 1,
    seq_length: int | None = None,
    pack: bool = False,
    prompt_template: str = "mixtral",
    skip_bad_rows: bool = False,
    show_progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> dict:
    """Tokenize ``input_path`` into Megatron indexed datasets; see the module docstring."""
    start = time.perf_counter()
    input_path = os.fspath(input_path)
    if not output_prefix:
        raise PreprocessError("output_prefix is required (e.g. output_prefix=data/my_corpus)")
    output_prefix = os.fspath(output_prefix)
    workers = int(workers)
    if workers < 1:
        raise PreprocessError(f"workers must be at least 1, got {workers}")
    if pack and handler == "pretrain":
        raise PreprocessError("pack=true is for instruction handlers (alpaca); pretraining data is not packed")
    if pack and not seq_length:
        raise PreprocessError("pack=true needs seq_length (e.g. seq_length=4096)")
    files = discover_inputs(input_path)
    try:
        tokenizer = load_tokenizer(tokenizer_kind, tokenizer_path)
        token_dtype = indexed.optimal_dtype(tokenizer.vocab_size)
        spec = H.make_handler_spec(
            handler,
            json_keys=json_keys,
            columns=columns,
            add_bos=add_bos,
            append_eod=append_eod,
            seq_length=seq_length,
            prompt_template=prompt_template,
            token_dtype=token_dtype.name,
        )
    except (TokenizerError, H.HandlerError) as exc:
        raise PreprocessError(str(exc)) from None
    if add_bos and tokenizer.bos_id is None:
        raise PreprocessError(f"tokenizer {tokenizer.path} has no BOS token; set add_bos=false")
    if append_eod and tokenizer.eos_id is None:
        raise PreprocessError(f"tokenizer {tokenizer.path} has no EOS token; set append_eod=false")

    prefixes = output_prefixes(output_prefix, handler, spec.json_keys)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise PreprocessError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    dtypes = {k: (token_dtype if handler == "pretrain" else np.dtype(np.int32)) for k in prefixes}
    packer = H.SequencePacker(seq_length, tokenizer.pad_id) if pack else None
    stats: dict = {}
    totals = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    examples: list[str] = []
    total_units = float(sum(os.path.getsize(p) for p, _ in files))
    initargs = (spec, tokenizer_kind, tokenizer_path, skip_bad_rows)
    writers: dict[str, indexed.IndexedWriter] = {}
    progress = _Progress(False, 0, "")
    completed = False
    pool = None
    try:
        # Workers first: forked before any output file is open or progress thread runs.
        if workers <= 1:
            _init_worker(*initargs, tokenizer=tokenizer, in_process=True)
        else:
            pool = _start_pool(workers, initargs)
        try:
            for key, prefix in prefixes.items():
                writers[key] = indexed.IndexedWriter(prefix, dtypes[key])
        except OSError as exc:
            raise PreprocessError(f"cannot write output {output_prefix}: {exc.strerror or exc}") from None
        progress = _Progress(show_progress, total_units, "tokenizing")
        chunks = _iter_chunks(files, spec, skip_bad_rows, int(chunk_rows), stats)
        for res in _run_ordered(chunks, pool):
            if res.error:
                raise PreprocessError(res.error)
            totals["rows"] += res.rows
            totals["skipped"] += res.bad
            reasons.update(res.reasons)
            examples.extend(res.examples[: MAX_EXAMPLES - len(examples)])
            tok = res.tokenized
            totals["empty"] += tok.empty
            totals["too_long"] += tok.too_long
            totals["tokens"] += tok.tokens
            if handler == "pretrain":
                for key, (tokens, lengths) in tok.documents.items():
                    writers[key].add_documents(tokens, lengths)
                totals["documents"] += tok.documents[spec.json_keys[0]][1].size
            elif packer is None:
                writers["input_ids"].add_documents(tok.input_ids, tok.lengths)
                writers["attention_mask"].add_documents(np.ones(tok.input_ids.size, dtype=np.int32), tok.lengths)
                writers["labels"].add_documents(tok.labels, tok.lengths)
                totals["documents"] += tok.lengths.size
            else:
                ends = np.cumsum(tok.lengths)
                starts = ends - tok.lengths
                for s, e in zip(starts.tolist(), ends.tolist()):
                    _write_packs(writers, packer.add(tok.input_ids[s:e], tok.labels[s:e]))
                totals["documents"] += tok.lengths.size
            progress.update(res.units, totals["rows"], totals["tokens"])
        if packer is not None:
            _write_packs(writers, packer.flush())
        if csv_bad := stats.get("csv_invalid", 0):
            totals["skipped"] += csv_bad
            reasons["malformed CSV row"] += csv_bad
            examples.extend(stats.get("csv_examples", [])[: MAX_EXAMPLES - len(examples)])
        if totals["rows"] == 0 and not totals["skipped"]:
            raise PreprocessError(f"no rows in input: {input_path}")
        if totals["documents"] == 0:
            raise PreprocessError(
                f"nothing to write from {input_path}: {totals['rows']} rows, "
                f"{totals['skipped']} skipped as bad, {totals['empty']} empty"
                + (f", {totals['too_long']} longer than seq_length={seq_length}" if seq_length else "")
            )
        indexed.commit(list(writers.values()))
        completed = True
    except OSError as exc:
        raise PreprocessError(f"cannot write output {output_prefix}: {exc.strerror or _first_line(exc)}") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        progress.stop(completed)
        if not completed:
            for w in writers.values():
                w.discard()
    seconds = time.perf_counter() - start
    written_tokens = writers[next(iter(writers))].num_tokens
    return {
        "input": input_path,
        "files": len(files),
        "handler": handler,
        "tokenizer": {"kind": tokenizer_kind, "path": tokenizer.path, "vocab_size": tokenizer.vocab_size},
        "rows": totals["rows"],
        "documents": totals["documents"],
        "tokens": totals["tokens"],
        "skipped": totals["skipped"],
        "skipped_reasons": dict(reasons),
        "skipped_examples": examples,
        "empty": totals["empty"],
        "too_long": totals["too_long"],
        "packs": packer.packs if packer else None,
        "padding_tokens": packer.padding if packer else 0,
        "tokens_written": written_tokens,
        "seconds": seconds,
        "rows_per_sec": totals["rows"] / seconds if seconds > 0 else 0.0,
        "tokens_per_sec": totals["tokens"] / seconds if seconds > 0 else 0.0,
        "workers": workers,
        "dtype": {k: dtypes[k].name for k in prefixes},
        "outputs": prefixes,
        "output_paths": [p for prefix in prefixes.values() for p in (prefix + ".bin", prefix + ".idx")],
    }


def _write_packs(writers: dict, packs: list) -> None:
    for ids, mask, labels in packs:
        lengths = np.array([ids.size], dtype=np.int64)
        writers["input_ids"].add_documents(ids, lengths)
        writers["attention_mask"].add_documents(mask, lengths)
        writers["labels"].add_documents(labels, lengths)


def format_report(report: dict) -> str:
    """A few human-readable lines summarising a :func:`preprocess` report."""
    lines = [
        f"preprocessed {report['input']} ({report['files']} file{'s' if report['files'] != 1 else ''}, "
        f"handler {report['handler']}, tokenizer {report['tokenizer']['kind']}, {report['workers']} worker"
        f"{'s' if report['workers'] != 1 else ''})",
        f"  rows {report['rows']:,}  documents {report['documents']:,}  tokens {report['tokens']:,}"
        f"  in {report['seconds']:.2f} s  ({report['rows_per_sec']:,.0f} rows/s, "
        f"{report['tokens_per_sec']:,.0f} tokens/s)",
    ]
    if report.get("packs") is not None:
        lines.append(f"  packed into {report['packs']:,} rows, {report['padding_tokens']:,} padding tokens")
    if report["skipped"]:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped_reasons"].items()))
        lines.append(f"  skipped {report['skipped']:,} bad rows ({detail})")
        lines += [f"    e.g. {m}" for m in report["skipped_examples"]]
    if report["empty"]:
        lines.append(f"  {report['empty']:,} empty rows not written")
    if report["too_long"]:
        lines.append(f"  {report['too_long']:,} samples longer than seq_length not written")
    for key, prefix in report["outputs"].items():
        lines.append(f"  {key}: {prefix}.bin/.idx ({report['dtype'][key]})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Hydra config -> preprocess(), and cached runs for the training side


def preprocess_from_config(cfg: Any) -> dict:
    """Run :func:`preprocess` from a composed ``conf/preprocess.yaml`` config."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    input_path = get("input")
    if not input_path:
        raise PreprocessError("input is required: python preprocess.py input=PATH output_prefix=PREFIX")
    handler_cfg = _plain(get("handler")) or {}
    if isinstance(handler_cfg, str):  # handler=alpaca: shorthand for preprocess_handler=alpaca
        handler_cfg = {"name": handler_cfg}
    tok_cfg = _plain(get("tokenizer")) or {}
    if isinstance(tok_cfg, str):  # tokenizer=hf, or tokenizer=/path/tokenizer.model|tokenizer.json
        tok_cfg = _tokenizer_shorthand(tok_cfg)
    json_keys = handler_cfg.get("json_keys") or ["text"]
    return preprocess(
        input_path,
        get("output_prefix"),
        handler=handler_cfg.get("name", "pretrain"),
        tokenizer_kind=tok_cfg.get("kind", "mixtral"),
        tokenizer_path=tok_cfg.get("path"),
        json_keys=[json_keys] if isinstance(json_keys, str) else list(json_keys),
        columns=handler_cfg.get("columns") or None,
        append_eod=bool(get("append_eod", True)),
        add_bos=bool(get("add_bos", True)),
        workers=int(get("workers", 1)),
        seq_length=get("seq_length"),
        pack=bool(handler_cfg.get("pack", get("pack", False))),
        prompt_template=handler_cfg.get("prompt_template", "mixtral"),
        skip_bad_rows=bool(get("skip_bad_rows", False)),
        show_progress=bool(get("show_progress", True)),
    )


def _tokenizer_shorthand(value: str) -> dict:
    from mixexp.data.tokenizers import KINDS

    if value in KINDS:
        return {"kind": value, "path": None}
    if value.endswith(".json") or os.path.isdir(value):
        return {"kind": "hf", "path": value}
    return {"kind": "sentencepiece", "path": value}


def _plain(node: Any) -> Any:
    if node is None:
        return None
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def main(cfg: Any) -> int:
    """CLI body: run, print the report; one line on stderr and exit code 2 on bad input."""

    def _terminate(signum, frame):  # SIGTERM cleans up like Ctrl-C: temporary files are removed
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        pass
    try:
        report = preprocess_from_config(cfg)
    except PreprocessError as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preprocess: interrupted; no output written", file=sys.stderr)
        return 130
    print(format_report(report))
    return 0


STAMP_VERSION = 1


def ensure_preprocessed(input_path: str | os.PathLike, output_prefix: str | os.PathLike, **options: Any) -> dict:
    """:func:`preprocess` unless its outputs exist for the same input files and options.

    A stamp ``{output_prefix}.preprocess.json`` records the input files (size,
    mtime), the options and the report; the report is returned, with
    ``cached=True`` when nothing had to be done. Call it from one process (rank
    0 or before launch): concurrent calls are safe (atomic renames) but wasteful.
    """
    input_path = os.fspath(input_path)
    output_prefix = os.fspath(output_prefix)
    options.setdefault("show_progress", False)
    files = discover_inputs(input_path)
    fingerprint = {
        "version": STAMP_VERSION,
        "inputs": [[os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p, _ in files],
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())
                    if k not in ("show_progress", "workers")},
    }
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    stamp_path = output_prefix + ".preprocess.json"
    try:
        with open(stamp_path, encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = None
    if stamp and stamp.get("fingerprint") == fingerprint:
        report = stamp.get("report", {})
        paths = report.get("output_paths", [])
        if paths and all(os.path.exists(p) for p in paths):
            return dict(report, cached=True)
    report = preprocess(input_path, output_prefix, **options)
    tmp = f"{stamp_path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fingerprint, "report": report}, f, indent=1, default=str)
    os.replace(tmp, stamp_path)
    return dict(report, cached=False)
