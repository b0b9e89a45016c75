"""What the framework costs on top of the model: start-up to the first step, and the loop's per-step overhead.

    .venv/bin/python bench/overhead.py                 # both parts
    .venv/bin/python bench/overhead.py --part startup --repeats 5
    .venv/bin/python bench/overhead.py --part loop --steps 30

startup: wall time from spawning `python train.py` (tiny model, bundled sample data, single) to the start of
its first training step (the first metrics.jsonl row appears; minus that step's `step_time_s`), against a
peer spawned the same way: a bare script that imports torch and megatron-core, creates a one-rank gloo group
and builds the same GPTModel with megatron's local MoE spec. The two alternate; medians and the ratio.

loop: `mixexp.worker.run` in this process (one rank, bundled sample data, metrics.jsonl and console on).
Each metrics row ends the clock of one loop iteration. The loop's overhead is what it adds to the model's
work: reading the data (timed inside Trainer.step) and everything around Trainer.step (the memory
all-reduce, metrics, jsonl, console: the iteration's wall time minus its `step_time_s`). A/B: after each
row, one step of a bare peer (`Trainer.step` of a second model on pre-built micro-batches) runs, off the
loop's clock, so the two alternate step by step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rank import REPO, FixedBatches, build_trainer, compose

PY = sys.executable
PEER = r"""
import sys, time, socket
t0 = float(sys.argv[1])
import torch, torch.distributed as dist, torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
imported = time.time()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
parallel_state.initialize_model_parallel()
config = TransformerConfig(num_layers=4, hidden_size=128, ffn_hidden_size=256, num_attention_heads=8,
    num_query_groups=4, normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
    add_bias_linear=False, num_moe_experts=8, moe_router_topk=2, moe_aux_loss_coeff=0.02,
    moe_router_load_balancing_type="aux_loss", use_cpu_initialization=True, init_method_std=0.02)
model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(num_experts=8, normalization="RMSNorm"),
    vocab_size=32000, max_sequence_length=128, share_embeddings_and_output_weights=False,
    position_embedding_type="rope", rotary_base=1000000)
print(f"PEER {imported - t0:.3f} {time.time() - t0:.3f}", flush=True)
"""


def time_train(run_dir: Path, overrides: list[str]) -> tuple[float, float]:
    """(seconds to the start of step 1, seconds to exit) of `python train.py`."""
    env = dict(os.environ, MIXEXP_CACHE=str(REPO / ".cache"))
    metrics = run_dir / "metrics.jsonl"
    start = time.time()
    proc = subprocess.Popen([PY, "train.py", "train.iters=2", f"hydra.run.dir={run_dir}", *overrides], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and metrics.exists() and metrics.stat().st_size:
            seen = time.time()
            row = json.loads(metrics.read_text().splitlines()[0])
            first = seen - row["step_time_s"] - start
        time.sleep(0.005)
    if proc.returncode != 0 or first is None:
        sys.exit(f"train.py failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return first, time.time() - start


def time_peer() -> tuple[float, float]:
    """(seconds to import torch + megatron-core, seconds to a built GPTModel) of the bare script."""
    start = time.time()
    out = subprocess.run([PY, "-W", "ignore", "-c", PEER, str(start)], capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PEER ")), None)
    if line is None:
        sys.exit(f"peer failed: {out.stderr[-2000:]}")
    imported, built = map(float, line.split()[1:])
    return imported, built


def startup(repeats: int, overrides: list[str]) -> None:
    firsts, exits, imports, builds = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for side in (("train", "peer") if i % 2 == 0 else ("peer", "train")):
                if side == "train":
                    first, end = time_train(Path(tmp) / f"run{i}", overrides)
                    firsts.append(first)
                    exits.append(end)
                else:
                    imported, built = time_peer()
                    imports.append(imported)
                    builds.append(built)
    med = statistics.median
    print(f"[startup] python train.py -> first step starts: median {med(firsts):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in firsts)}); to exit after 2 steps {med(exits):.2f} s")
    print(f"[startup] peer: import torch + megatron-core {med(imports):.2f} s, model built {med(builds):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in builds)})")
    print(f"RESULT startup: first step after {med(firsts):.2f} s vs peer {med(builds):.2f} s: "
          f"ratio {med(firsts) / med(builds):.2f}x (target <= 1.5x)")


def loop(steps: int, overrides: list[str]) -> None:
    from mixexp import report
    from mixexp.app import worker_config
    from mixexp.data import loader
    from mixexp.data.prepare import prepare_data
    from mixexp.launch import free_port
    from mixexp.layout import validate

    cfg = compose(f"train.iters={steps}", "train.log_interval=1", *overrides)
    layout = validate(cfg)
    walls, bare, fetch = [], [], []
    state = {}
    step_batches = loader.MicroBatches.step

    def timed_batches(self, step):  # what the loop's data costs, inside Trainer.step
        start = time.perf_counter()
        batches = list(step_batches(self, step))
        fetch.append(time.perf_counter() - start)
        return iter(batches)

    class AlternatingWriter(report.MetricsWriter):
        """Ends each loop iteration's clock, then runs one step of the bare peer, then restarts the clock."""

        def write(self, row):
            super().write(row)
            walls.append(time.perf_counter() - state.get("resume", 0.0))
            if "peer" not in state:  # built inside the worker's process group, on its first global batch
                from rank import build_model

                first = list(step_batches(loader.MicroBatches(state["dataset"], wcfg, layout, 0, 0), 0))
                state["peer"] = build_trainer(wcfg, build_model(wcfg, layout), FixedBatches(first))
            start = time.perf_counter()
            state["peer"].step(row["step"] - 1)
            bare.append(time.perf_counter() - start)
            state["resume"] = time.perf_counter()

    build_dataset = loader.build_dataset

    def keep_dataset(*args, **kwargs):
        state["dataset"] = build_dataset(*args, **kwargs)
        return state["dataset"]

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        prefix = prepare_data(cfg.data, cfg.train.seq_length)
        wcfg = worker_config(cfg, layout, prefix)
        report.MetricsWriter, loader.MicroBatches.step, loader.build_dataset = (AlternatingWriter, timed_batches,
                                                                                 keep_dataset)
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        from mixexp import worker

        worker.run(wcfg, run_dir, 0, 1)
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skip = max(2, cfg.train.warmup_steps)
    walls, bare, data = walls[skip:], bare[skip:], fetch[skip:len(rows)]
    inside = [r["step_time_s"] for r in rows][skip:]
    around = [w - s for w, s in zip(walls, inside)]
    med = statistics.median
    print(f"[loop] {len(walls)} steps after {skip} warm-up: loop iteration median {med(walls) * 1e3:.1f} ms; "
          f"inside Trainer.step {med(inside) * 1e3:.1f} ms, of which reading data {med(data) * 1e3:.2f} ms; "
          f"around it (memory all-reduce, metrics, jsonl, console) {med(around) * 1e3:.2f} ms")
    overhead = (med(around) + med(data)) / (med(walls) - med(around) - med(data))
    print(f"[loop] A/B, alternating step by step: Trainer.step alone on pre-built micro-batches median "
          f"{med(bare) * 1e3:.1f} ms; loop / bare = {med(walls) / med(bare):.3f} (fastest steps "
          f"{min(walls) / min(bare):.3f}); load average {os.getloadavg()[0]:.2f}")
    print(f"RESULT loop: overhead {100 * overhead:.2f}% of the step (data + around the step; target < 3%); "
          f"A/B {100 * (med(walls) / med(bare) - 1):+.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("startup", "loop", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=3, help="start-ups per side")
    parser.add_argument("--steps", type=int, default=25, help="loop steps")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for train.py / the loop")
    args = parser.parse_args()
    if args.part in ("startup", "both"):
        startup(args.repeats, args.overrides)
    if args.part in ("loop", "both"):
        loop(args.steps, args.overrides)


if __name__ == "__main__":
    main()
