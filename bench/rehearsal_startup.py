"""Start-up cost of a rehearsal rank (real MindSpeed over the torch_npu stand-in) against a native CPU rank.

Runs `train.py` single-rank with `hardware=cpu` and with `hardware=ascend_rehearsal`, alternating, and times
each from launch to its first step line (time to first step) and to the end; prints the medians and their
ratio. Run: `python bench/rehearsal_startup.py [repeats]` (needs make setup-mindspeed).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["data=synthetic", "train.iters=2", "train.precision=fp32"]


def time_to_first_step(hardware: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "train.py", f"hardware={hardware}", *ARGS,
                                 f"hydra.run.dir={run_dir}"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        first = None
        for line in proc.stdout:
            if first is None and line.startswith("step "):
                first = time.perf_counter() - start
        if proc.wait() != 0 or first is None:
            raise SystemExit(f"hardware={hardware} failed (exit {proc.returncode})")
        return first, time.perf_counter() - start


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results = {"cpu": [], "ascend_rehearsal": []}
    for _ in range(repeats):
        for hardware in results:
            results[hardware].append(time_to_first_step(hardware))
    median = {hw: statistics.median(first for first, _ in runs) for hw, runs in results.items()}
    for hardware, runs in results.items():
        print(f"{hardware:>17}: time to first step {median[hardware]:.1f} s (runs: "
              f"{', '.join(f'{first:.1f}' for first, _ in runs)})")
    print(f"rehearsal / native time to first step: {median['ascend_rehearsal'] / median['cpu']:.2f}x")


if __name__ == "__main__":
    main()
