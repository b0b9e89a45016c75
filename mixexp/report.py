"""Run outputs: console lines, metrics.jsonl, summary.json (written once, atomically)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

SUMMARY_KEYS = ("status", "error", "layout", "world_size", "params_total", "params_per_rank_max",
                "tokens_per_sec", "tokens_per_sec_per_device", "step_time_s", "tflops_per_device", "mfu",
                "peak_memory_gb", "first_loss", "final_loss", "cpu_threads", "stack")


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


FAILED_STATUSES = ("failed", "diverged", "does_not_fit")  # the run did not do what was asked: exit code 1


def json_number(value):
    """NaN and Inf are not JSON: written as null (the summary's error or the row says what was not finite)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_summary(run_dir, **fields) -> dict:
    """summary.json with the contract's keys; `error` only when the run failed, diverged or does not fit,
    `skipped_steps` only when train.on_nan=skip dropped updates."""
    summary = {k: json_number(fields.get(k)) for k in SUMMARY_KEYS}
    if summary["status"] not in FAILED_STATUSES:
        summary.pop("error")
    if fields.get("skipped_steps"):
        summary["skipped_steps"] = fields["skipped_steps"]
    write_json_atomic(Path(run_dir) / "summary.json", summary)
    return summary


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def console_line(row: dict, iters: int, eta_s: float | None) -> str:
    return (f"step {row['step']:>5}/{iters} | loss {_fmt(row['loss'], '.4f')} | lr {row['lr']:.2e} | "
            f"grad {_fmt(row['grad_norm'], '.3f')} | {row['step_time_s']:.3f} s | {row['tokens_per_sec']:,.0f} tok/s | "
            f"{row['tokens_per_sec_per_device']:,.0f} tok/s/dev | {row['tflops_per_device']:.3f} TFLOP/s/dev | "
            f"MFU {_fmt(None if row['mfu'] is None else 100 * row['mfu'], '.1f')}% | "
            f"mem {_fmt(row['memory_gb'], '.2f')} GB | ETA {_fmt(eta_s, '.0f')} s")


class MetricsWriter:
    """Writes one JSON object per step; prints the console line every log_interval steps."""

    def __init__(self, run_dir, iters: int, log_interval: int, keep_until: int = 0):
        """keep_until: a run resumed from step k in its own run dir keeps its rows up to k."""
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = []
        if keep_until and self.path.exists():
            rows = (json.loads(line) for line in self.path.read_text().splitlines() if line.strip())
            kept = [r for r in rows if r["step"] <= keep_until]
        self.file = open(self.path, "w")
        self.iters, self.log_interval = iters, log_interval
        self.rows: list[dict] = []
        for row in kept:
            self.rows.append(row)
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def write(self, row: dict) -> None:
        row = {k: json_number(v) for k, v in row.items()}
        self.rows.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        step = row["step"]
        if step % self.log_interval == 0 or step == self.iters:
            recent = [r["step_time_s"] for r in self.rows[-5:]]
            eta = (self.iters - step) * sum(recent) / len(recent)
            print(console_line(row, self.iters, eta), file=sys.stdout, flush=True)

    def close(self) -> None:
        self.file.close()
