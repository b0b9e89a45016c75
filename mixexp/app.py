"""The job behind `python train.py`: validate, prepare data, launch the ranks, report.

Runs in the Hydra job process and never imports torch or megatron-core, so a
bad configuration is answered before those imports cost anything.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mixexp import cluster
from mixexp.errors import ConfigError
from mixexp.layout import Layout, validate


def nproc_per_node(cfg, layout: Layout) -> int:
    """Devices (ranks) on this node: the cluster's or hardware's; on CPU the layout decides."""
    per_node = cfg.cluster.devices_per_node or cfg.hardware.devices_per_node
    if per_node:
        return per_node
    return layout.world_size // cfg.cluster.nnodes


def run_group(cfg) -> str | None:
    """The W&B group: a sweep's jobs share one named after the sweep. (The run's name is its
    directory's, which the ranks have.)"""
    group = cfg.logger.group
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and group is None:
            from mixexp.wandb_logger import sweep_group
            group = sweep_group(hydra_cfg.sweep.dir)
    except ValueError:  # not inside a Hydra job (a test calling train() directly)
        pass
    return group


def worker_config(cfg: DictConfig, layout: Layout, data_prefix: str | None) -> DictConfig:
    """The resolved config the ranks read, with derived values filled in."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(resolved, False)
    resolved.cluster.devices_per_node = nproc_per_node(cfg, layout)
    resolved.data_prefix = data_prefix
    resolved.run_group = run_group(cfg)
    resolved.cluster.update(cluster.resolve(cfg.cluster))
    return resolved


def failed_summary(run_dir: Path, cfg, error: str, layout: Layout | None = None) -> dict:
    from mixexp.report import write_summary

    return write_summary(run_dir, status="failed", error=error,
                         layout=layout.as_dict() if layout else None,
                         world_size=layout.world_size if layout else None)


def unknown_keys(node, schema, prefix: str = "") -> list[str]:
    """Keys of the composed config that no schema declares (`+nosuchkey=1` adds one without complaint)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    found = []
    for key in node:
        if key not in hints:
            found.append(prefix + str(key))
        elif dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            found += unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return found


def check_known_keys(cfg) -> None:
    from mixexp.config import RootConfig
    from mixexp.errors import ConfigError

    unknown = unknown_keys(cfg, RootConfig)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}: no config group declares it (a typo? `python train.py --cfg "
                          f"job` lists every key)")


def check_gpus(cfg, ranks: int) -> None:
    """CUDA torch, enough GPUs and bf16, asked in a short subprocess (this process never imports torch)."""
    import subprocess
    import sys

    from mixexp.errors import ConfigError

    proc = subprocess.run([sys.executable, "-m", "mixexp.devices.cuda", str(ranks), cfg.train.precision],
                          capture_output=True, text=True)
    if proc.returncode == 2:
        raise ConfigError(proc.stderr.strip().splitlines()[-1])


def rank_config_error(error: str | None) -> str | None:
    """A rank that stopped on a ConfigError (what only the device could tell): its message, else None."""
    marker = ": ConfigError: "
    return error.split(marker, 1)[1] if error and error.startswith("rank ") and marker in error else None


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one job; raises ConfigError for what the user must fix. Returns summary.json's content."""
    import json

    check_known_keys(cfg)
    layout = validate(cfg)
    if cfg.train.dry_run:
        from mixexp.dryrun import dry_run_in_subprocess
        return dry_run_in_subprocess(cfg, layout, run_dir)
    if cfg.engine.name == "megatron_lm":
        from mixexp.engines.megatron_lm import run_megatron_lm
        return run_megatron_lm(cfg, layout, run_dir)
    if cfg.hardware.device == "npu":  # answer a missing install, a bad pairing or a bad flag before launching
        from mixexp.devices.npu import check_installation
        from mixexp.devices.npu_versions import check_installed_pairing
        from mixexp.megatron_args import render
        check_installation(rehearsal=cfg.hardware.rehearsal)
        check_installed_pairing()
        render(cfg)

    from mixexp import ckpt_dirs
    from mixexp.data.prepare import check_sample_lengths, prepare_data
    from mixexp.launch import launch, root_cause

    load_path, _ = ckpt_dirs.resolve(cfg.ckpt, run_dir)  # a wrong ckpt.load is a config error, answered here
    if load_path and cfg.ckpt.verify:
        ckpt_dirs.check_sizes(load_path)  # a truncated or missing file too (contents: by the ranks)

    if cfg.hardware.device == "cuda":
        check_gpus(cfg, nproc_per_node(cfg, layout))
    prefix = prepare_data(cfg.data, cfg.train.seq_length)
    note = check_sample_lengths(cfg.data, prefix, cfg.train.seq_length)
    if note:
        print(note, flush=True)
    code = launch(worker_config(cfg, layout, prefix), run_dir, nproc_per_node(cfg, layout))
    summary_path = run_dir / "summary.json"
    if code == 0 and summary_path.exists():
        return json.loads(summary_path.read_text())
    error = root_cause(run_dir) or f"torchrun exited with code {code}"
    if rank_config_error(error):  # what only a rank could tell (the NPU switch checks, the GPUs it sees)
        raise ConfigError(rank_config_error(error))
    return failed_summary(run_dir, cfg, error, layout)
