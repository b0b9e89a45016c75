"""Throughput of mixexp's preprocess against a straightforward single-process reference.

    .venv/bin/python bench/preprocess_bench.py [--rows 20000] [--repeats 3] [--record]

Input: a parquet file of ``--rows`` documents (the bundled sample_text.jsonl
repeated). Three contenders write the same dataset (BOS + text + EOD per row,
uint16, Mixtral tokenizer) and must produce identical bytes:

  reference    pyarrow reads the whole parquet, each row is encoded with
               sentencepiece, written with megatron-core's IndexedDatasetBuilder
               (``add_item(torch.IntTensor(ids))`` + ``end_document()``)
  workers=1    mixexp.data.preprocess.preprocess(..., workers=1)
  workers=2    mixexp.data.preprocess.preprocess(..., workers=2)

Each is run ``--repeats`` times, interleaved; the best wall time counts (the
machine is shared, the best run is the least disturbed). Prints rows/s,
tokens/s and the ratios; ``--record`` appends a section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_input(path: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(os.path.join(ROOT, "data", "sample", "sample_text.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    column = [f"{i}. {texts[i % len(texts)]}" for i in range(rows)]
    pq.write_table(pa.table({"text": column}), path, row_group_size=4096)


def reference(input_path: str, prefix: str, model_path: str) -> tuple[int, int]:
    import numpy as np
    import pyarrow.parquet as pq
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    sp = spm.SentencePieceProcessor(model_file=model_path)
    bos, eod = sp.bos_id(), sp.eos_id()
    texts = pq.read_table(input_path, columns=["text"]).column("text").to_pylist()
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    tokens = 0
    for text in texts:
        ids = [bos] + sp.encode(text) + [eod]
        builder.add_item(torch.IntTensor(ids))
        builder.end_document()
        tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return len(texts), tokens


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()

    import torch  # noqa: F401  (imported before timing, as the reference needs it)
    import megatron.core.datasets.indexed_dataset  # noqa: F401

    from mixexp.data.preprocess import preprocess
    from mixexp.data.tokenizers import mixtral_model_path

    tmp = tempfile.mkdtemp(prefix="mixexp-bench-")
    try:
        run(args, tmp, preprocess, mixtral_model_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp, preprocess, mixtral_model_path) -> None:
    src = os.path.join(tmp, "input.parquet")
    make_input(src, args.rows)
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    counts: dict[str, tuple[int, int]] = {}

    def timed(name, fn):
        c, t = _cpu(), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t
        if wall < best.get(name, 1e9):
            best[name], cpu[name] = wall, _cpu() - c
        return result

    for _ in range(args.repeats):
        counts["reference"] = timed("reference", lambda: reference(src, os.path.join(tmp, "ref"), mixtral_model_path()))
        for workers in (1, 2):
            name = f"workers={workers}"
            report = timed(name, lambda: preprocess(src, os.path.join(tmp, f"w{workers}"), workers=workers,
                                                    show_progress=False))
            counts[name] = (report["documents"], report["tokens"])
    for workers in (1, 2):
        for ext in (".bin", ".idx"):
            same = filecmp.cmp(os.path.join(tmp, "ref" + ext), os.path.join(tmp, f"w{workers}_text_document" + ext),
                               shallow=False)
            if not same:
                raise SystemExit(f"workers={workers} wrote different {ext} bytes than the reference")
    rows, tokens = counts["reference"]
    assert all(c == (rows, tokens) for c in counts.values()), counts
    load = os.getloadavg()[0]
    lines = [f"input: {args.rows} rows, {tokens:,} tokens (parquet); best of {args.repeats}; outputs byte-identical; "
             f"load average {load:.1f}"]
    for name in ("reference", "workers=1", "workers=2"):
        s = best[name]
        lines.append(f"{name:>10}: {s:6.2f} s  {rows / s:9,.0f} rows/s  {tokens / s:11,.0f} tokens/s"
                     f"  (cpu {cpu[name]:5.2f} s)")
    r1 = best["reference"] / best["workers=1"]
    r2 = best["reference"] / best["workers=2"]
    lines.append(f"ratio workers=1 / reference: {r1:.2f}x")
    lines.append(f"ratio workers=2 / reference: {r2:.2f}x   (target >= 1.8x on 2 cores)")
    lines.append(f"ratio workers=2 / workers=1: {best['workers=1'] / best['workers=2']:.2f}x")
    text = "\n".join(lines)
    print(text)
    if args.record:
        section = (
            f"\n## preprocess throughput (issue 4)\n\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- machine: 2-core CPU sandbox ({os.cpu_count()} CPUs visible, Python {platform.python_version()}; "
            f"shared with other jobs)\n"
            f"- command: `.venv/bin/python bench/preprocess_bench.py --rows {args.rows} --repeats {args.repeats}`\n"
            f"- figure: workers=2 is **{r2:.2f}x** the reference (megatron-core IndexedDatasetBuilder, row by row); "
            f"workers=1 {r1:.2f}x\n\n```\n{text}\n```\n"
        )
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        new = not os.path.exists(path)
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write("# Benchmark results\n")
            f.write(section)
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
