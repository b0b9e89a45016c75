"""Tokenization of chunks in worker processes, results in input order.

Each worker validates the rows of whole chunks (:mod:`mixexp.data.records`) and
tokenizes them (:func:`mixexp.data.handlers.tokenize`); :func:`run_ordered`
yields the results in input order, so the output bytes do not depend on the
number of workers. With one worker everything runs in the calling process.
"""

from __future__ import annotations

import collections
import os
import signal
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from mixexp.data import handlers as H
from mixexp.data.readers import MAX_EXAMPLES, SKIP_HINT, Chunk
from mixexp.data.records import MISSING, check_value, records
from mixexp.lifetime import die_with_parent


@dataclass
class ChunkResult:
    rows: int = 0
    bad: int = 0  # rows skipped as bad
    reasons: dict = field(default_factory=dict)  # {kind: count} of the bad rows
    examples: list = field(default_factory=list)  # first messages about bad rows
    error: str | None = None  # the first bad row's message, when not skipping
    tokenized: H.Tokenized | None = None
    units: float = 0.0


# What every chunk needs, set once per process by _init_worker.
_WORKER: dict = {}


def start_workers(workers: int, spec: H.HandlerSpec, tokenizer, skip_bad_rows: bool):
    """The process pool for ``workers > 1`` (every worker started), else ``None``.

    With one worker, the calling process is set up to process chunks itself.
    Pool workers get ``tokenizer`` through fork, or pickled (it reloads from its
    kind and path) under spawn / forkserver.
    """
    if workers <= 1:
        _init_worker(spec, tokenizer, skip_bad_rows, in_process=True)
        return None
    return _start_pool(workers, (spec, tokenizer, skip_bad_rows, False, os.getpid()))


def run_ordered(chunks: Iterable[Chunk], pool) -> Iterator[ChunkResult]:
    """Results in input order; at most ``2 * workers + 2`` chunks in flight."""
    if pool is None:
        for chunk in chunks:
            yield process_chunk(chunk)
        return
    window = 2 * pool._max_workers + 2
    pending: collections.deque = collections.deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(process_chunk, chunk))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def process_chunk(chunk: Chunk) -> ChunkResult:
    """Validate and tokenize one chunk; stops at the first bad row unless skipping."""
    spec: H.HandlerSpec = _WORKER["spec"]
    skip: bool = _WORKER["skip"]
    fields = spec.fields
    optional = spec.optional_fields
    cols = [spec.column_for(f) for f in fields]
    result = ChunkResult(units=chunk.units)
    values: dict[str, list[str]] = {f: [] for f in fields}
    for where, rec in records(chunk):
        result.rows += 1
        reason = None
        texts = []
        if isinstance(rec, tuple):
            reason = rec
        else:
            for f, col in zip(fields, cols):
                text, reason = check_value(rec.get(col, MISSING), col, f in optional)
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


def _init_worker(spec: H.HandlerSpec, tokenizer, skip_bad_rows: bool, in_process: bool = False,
                 parent_pid: int | None = None) -> None:
    if not in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler, inherited by fork
        die_with_parent(parent_pid)  # a killed preprocess.py takes its workers with it
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.clear()
    _WORKER.update(spec=spec, tokenizer=tokenizer, skip=skip_bad_rows)


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


def _worker_pid() -> int:
    return os.getpid()


def _start_pool(workers: int, initargs: tuple):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
    try:
        # The executor starts processes lazily; one task per worker starts them all now.
        for f in [pool.submit(_worker_pid) for _ in range(workers)]:
            f.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool
