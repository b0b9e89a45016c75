"""Dry run: the exact parameters of the busiest rank, without devices or a cluster.

Each rank's model is built on the meta device (no memory) inside a fake
process group that pretends to be that rank of the full world, so
megatron-core lays out exactly the shards it would on the cluster. Only one
rank per pipeline stage is built: within a stage every rank holds the same
number of parameters (tp, cp, dp and ep shards are equal).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from mixexp.layout import Layout
from mixexp.lifetime import die_with_parent_preexec


def stage_parameter_counts(cfg, layout: Layout) -> list[int]:
    """Parameters held by a rank of each pipeline stage, first to last."""
    from mixexp.devices import cpu

    cpu.prepare(target="meta")
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from mixexp.model import build_model_chunks, count_parameters, init_parallel_state

    counts = []
    ranks_per_stage = layout.world_size // layout.pp
    for stage in range(layout.pp):
        dist.init_process_group("fake", rank=stage * ranks_per_stage, world_size=layout.world_size, store=FakeStore())
        try:
            init_parallel_state(layout, create_gloo_process_groups=False)
            with torch.device("meta"):
                chunks = build_model_chunks(cfg, layout, meta=True)
            counts.append(count_parameters(chunks))
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
    return counts


def memory_options(cfg) -> list[tuple[str, object]]:
    """Changes that save memory without changing the layout: (key, value), those that apply to cfg."""
    t, options = cfg.train, []
    if t.recompute != "full":
        options += [("train.recompute", r) for r in ("selective", "full") if r != t.recompute]
    if not cfg.parallel.distributed_optimizer:
        options.append(("parallel.distributed_optimizer", True))
    if t.precision == "fp32" and cfg.hardware.bf16_supported:
        options.append(("train.precision", "bf16"))
    if t.micro_batch_size > 1:
        options.append(("train.micro_batch_size", 1))
    return options


def _with(cfg, changes: tuple) -> object:
    trial = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in changes:
        OmegaConf.update(trial, key, value)
    return trial


def fitting_changes(cfg, layout: Layout, counts: list[int], limit: int = 3) -> list[tuple[str, float]]:
    """The fewest changes that fit, fastest first (by the planner's time model): ("key=value ...", GB)."""
    import itertools

    from mixexp.memory import peak_memory
    from mixexp.timing import predict_step

    options = memory_options(cfg)
    for size in range(1, len(options) + 1):
        found = []
        for changes in itertools.combinations(options, size):
            if len({key for key, _ in changes}) < size:  # two values of one key
                continue
            trial = _with(cfg, changes)
            gb = peak_memory(trial, layout, counts)["total_gb"]
            if gb <= cfg.hardware.memory_gb:
                text = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes)
                found.append((predict_step(trial, layout, counts).step_time_s, text, gb))
        if found:
            return [(text, gb) for _, text, gb in sorted(found)[:limit]]
    return []


def planner_command(cfg) -> str:
    """`python -m mixexp.plan` for the same model, cluster and batch: layouts that fit, ranked."""
    c, t = cfg.cluster, cfg.train
    parts = [f"model={cfg.model.name}", f"hardware={cfg.hardware.name}", f"cluster.nnodes={c.nnodes}"]
    parts += [f"cluster.devices_per_node={c.devices_per_node}"] if c.devices_per_node else []
    parts += [f"train.seq_length={t.seq_length}", f"train.global_batch_size={t.global_batch_size}"]
    return "python -m mixexp.plan " + " ".join(parts)


def does_not_fit(cfg, layout: Layout, counts: list[int], total_gb: float) -> str:
    """One line: by how much, and the cheapest changes that would fit."""
    capacity = cfg.hardware.memory_gb
    line = f"needs {total_gb:.1f} GB per device of {capacity:.1f} GB ({total_gb - capacity:.1f} GB over)"
    changes = fitting_changes(cfg, layout, counts)
    if changes:
        line += "; fits with " + ", or ".join(f"{text} ({gb:.1f} GB)" for text, gb in changes)
    return line + f"; or a layout from the planner: {planner_command(cfg)}"


def dry_run(cfg, layout: Layout, run_dir: Path) -> dict:
    from mixexp.flops import params_total
    from mixexp.memory import peak_memory
    from mixexp.model import padded_vocab_size
    from mixexp.report import write_summary

    counts = stage_parameter_counts(cfg, layout)
    busiest = max(range(len(counts)), key=counts.__getitem__)
    memory = peak_memory(cfg, layout, counts)
    fits = memory["total_gb"] <= cfg.hardware.memory_gb
    error = None if fits else does_not_fit(cfg, layout, counts, memory["total_gb"])
    summary = write_summary(run_dir, status="dry_run" if fits else "does_not_fit", error=error,
                            layout=layout.as_dict(), world_size=layout.world_size,
                            params_total=params_total(cfg.model, padded_vocab_size(cfg)),
                            params_per_rank_max=counts[busiest], peak_memory_gb=memory["total_gb"])
    print(f"[dry run] {cfg.model.name} on {layout.name} (world {layout.world_size}): "
          f"{summary['params_total']:,} parameters, at most {counts[busiest]:,} per rank (pipeline stage {busiest}); "
          f"estimated {memory['total_gb']:.1f} GB per device of {cfg.hardware.memory_gb} GB"
          f" ({'fits' if fits else 'does NOT fit'})", flush=True)
    return summary


def dry_run_in_subprocess(cfg, layout: Layout, run_dir: Path) -> dict:
    """Keeps torch and megatron-core (and their process-global state) out of the Hydra job process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "dry_run_config.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    code = subprocess.call([sys.executable, "-m", "mixexp.dryrun", str(path), str(run_dir)],
                           preexec_fn=die_with_parent_preexec())
    summary_path = run_dir / "summary.json"
    if code != 0 or not summary_path.exists():
        from mixexp.report import write_summary
        return write_summary(run_dir, status="failed", error=f"dry run exited with code {code}",
                             layout=layout.as_dict(), world_size=layout.world_size)
    return json.loads(summary_path.read_text())


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    from mixexp.layout import validate

    config = OmegaConf.load(sys.argv[1])
    dry_run(config, validate(config), Path(sys.argv[2]))
