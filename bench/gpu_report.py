"""The bench/RESULTS.md rows of one gpu_check.sh run directory: python bench/gpu_report.py OUT_DIR"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

PEAK_SPEC = 989e12  # H100/H200 SXM dense bf16


def rows(out: Path) -> str:
    env, mm, prof, hf = (json.loads((out / f"{name}.json").read_text()) for name in ("env", "matmul", "profile", "hf"))
    s = json.loads((out / "native" / "summary.json").read_text())
    if s["status"] != "ok":
        raise SystemExit(f"gpu_report: the native run failed: {s.get('error')}")
    cfg = (out / "native" / ".hydra" / "overrides.yaml").read_text().split("\n")
    keys = ("- model", "- hardware", "- train.seq_length", "- train.micro_batch_size", "- train.global_batch_size",
            "- train.precision")
    model = " ".join(line[2:] for line in cfg if line.startswith(keys))
    tflops = s["tflops_per_device"]
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in prof["share"].items())
    today = datetime.date.today()
    return "\n".join([
        "| date | device | model | tokens/s | TFLOP/s | MFU of 989 | MFU of measured matmul peak | peak GB |",
        "|---|---|---|---|---|---|---|---|",
        f"| {today} | {env['gpu']}, torch {env['torch']} | {model} | {s['tokens_per_sec']:,.0f} | {tflops:.4g} | "
        f"{100 * tflops * 1e12 / PEAK_SPEC:.1f}% | {100 * tflops / mm['tflops']:.1f}% of {mm['tflops']:.4g} | "
        f"{s['peak_memory_gb'] or 0:.1f} |",
        "",
        f"Share of one profiled step's op time ({prof['experts_module']} experts, step {prof['profiled_step_s']:.3f} s): "
        f"{shares}",
        "",
        "| date | device | model | mixexp s/step | HF s/step | HF / mixexp |",
        "|---|---|---|---|---|---|",
        f"| {today} | {env['gpu']} | {model}; HF transformers {hf['transformers']} {hf['dtype']}, "
        f"{hf['attn_implementation']}, experts {hf['experts_implementation']} | {s['step_time_s']:.3f} | "
        f"{hf['step_s']:.3f} | **{hf['step_s'] / s['step_time_s']:.2f}x** |",
    ])


if __name__ == "__main__":
    print(rows(Path(sys.argv[1])))
