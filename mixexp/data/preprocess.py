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
memory stays bounded on inputs larger than RAM: by the chunks in flight and by the
largest single document, which is tokenized whole (about 50 bytes of memory per
byte of text: 1.6 GB for one 30 MB document; split such documents beforehand).

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

Command line (``preprocess.py`` at the repository root, ``conf/preprocess.yaml``)::

    python preprocess.py input=PATH output_prefix=PREFIX [workers=2] [skip_bad_rows=true]
        [preprocess_handler=alpaca | handler=alpaca] [handler.columns={output: answer}]
        [preprocess_tokenizer=hf tokenizer.path=DIR | tokenizer=/path/tokenizer.model]
        [pack=true seq_length=4096] [add_bos=false] [append_eod=false]

Worker processes are forked (``MIXEXP_PREPROCESS_START_METHOD`` overrides) before
any output is opened; each one tokenizes whole chunks of rows, and results are
written in input order, so the bytes do not depend on ``workers``.

This module is the public face (API, command line); the work is in
:mod:`~mixexp.data.readers` (input files -> chunks of rows),
:mod:`~mixexp.data.workers` (chunks -> tokens, in order, over processes) with
:mod:`~mixexp.data.records` (row decoding and checks),
:mod:`~mixexp.data.outputs` (tokens -> ``.bin``/``.idx``) and
:mod:`~mixexp.data.progress`.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from mixexp.data import handlers as H
from mixexp.data import indexed
from mixexp.data.outputs import OutputDatasets, output_prefixes
from mixexp.data.progress import Progress
from mixexp.data.readers import (
    CHUNK_ROWS,
    MAX_EXAMPLES,
    MalformedCsvRows,
    PreprocessError,
    discover_inputs,
    first_line,
    iter_chunks,
)
from mixexp.data.tokenizers import KINDS as TOKENIZER_KINDS, TokenizerError, load_tokenizer
from mixexp.data.workers import run_ordered, start_workers

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
    if output_prefix.endswith(("/", os.sep)):  # would write DIR/_text_document.bin
        raise PreprocessError(f"output_prefix={output_prefix} ends with a directory separator; name the files, "
                              f"e.g. output_prefix={os.path.join(output_prefix, 'corpus')}")
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
    malformed_csv = MalformedCsvRows()
    totals: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    examples: list[str] = []
    total_units = float(sum(os.path.getsize(p) for p, _ in files))
    pool = outputs = progress = None
    completed = False
    try:
        # Workers first: forked before any output file is open or progress thread runs.
        pool = start_workers(workers, spec, tokenizer, skip_bad_rows)
        outputs = OutputDatasets(spec, prefixes, dtypes, packer)
        progress = Progress(show_progress, total_units, "tokenizing")
        chunks = iter_chunks(files, spec, skip_bad_rows, int(chunk_rows), malformed_csv)
        for res in run_ordered(chunks, pool):
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
            totals["documents"] += outputs.write(tok)
            progress.update(res.units, totals["rows"], totals["tokens"])
        outputs.finish()
        if malformed_csv.count:
            totals["skipped"] += malformed_csv.count
            reasons["malformed CSV row"] += malformed_csv.count
            examples.extend(malformed_csv.examples[: MAX_EXAMPLES - len(examples)])
        if totals["rows"] == 0 and not totals["skipped"]:
            raise PreprocessError(f"no rows in input: {input_path}")
        if totals["documents"] == 0:
            raise PreprocessError(
                f"nothing to write from {input_path}: {totals['rows']} rows, "
                f"{totals['skipped']} skipped as bad, {totals['empty']} empty"
                + (f", {totals['too_long']} longer than seq_length={seq_length}" if seq_length else "")
            )
        outputs.commit()
        completed = True
    except OSError as exc:
        raise PreprocessError(f"cannot write output {output_prefix}: {exc.strerror or first_line(exc)}") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if progress is not None:
            progress.stop(completed)
        if outputs is not None and not completed:
            outputs.discard()
    seconds = time.perf_counter() - start
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
        "tokens_written": outputs.tokens_written,
        "seconds": seconds,
        "rows_per_sec": totals["rows"] / seconds if seconds > 0 else 0.0,
        "tokens_per_sec": totals["tokens"] / seconds if seconds > 0 else 0.0,
        "workers": workers,
        "dtype": {k: dtypes[k].name for k in prefixes},
        "outputs": prefixes,
        "output_paths": [p for prefix in prefixes.values() for p in (prefix + ".bin", prefix + ".idx")],
    }


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
# The command line: a composed conf/preprocess.yaml -> preprocess()


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
    return preprocess(
        input_path,
        get("output_prefix"),
        handler=handler_cfg.get("name", "pretrain"),
        tokenizer_kind=tok_cfg.get("kind", "mixtral"),
        tokenizer_path=tok_cfg.get("path"),
        json_keys=handler_cfg.get("json_keys") or ["text"],  # a string is one key (make_handler_spec)
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
    if value in TOKENIZER_KINDS:
        return {"kind": value, "path": None}
    if value.endswith(".json") or os.path.isdir(value):
        return {"kind": "hf", "path": value}
    return {"kind": "sentencepiece", "path": value}


def _plain(node: Any) -> Any:
    """An OmegaConf node as plain Python (dict, list, str); anything else unchanged."""
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
