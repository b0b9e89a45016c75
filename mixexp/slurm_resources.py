"""What `hydra/launcher=slurm` asks SLURM for, from the hardware config (resolvers in conf/hydra/launcher/slurm.yaml).

On `hardware=cpu` the ranks are processes sharing the node's cores: ask for all of this machine's
cores and no GPUs. On GPUs ask for `devices_per_node` GPUs per node (`--gpus-per-node`); on NPUs for
the generic resource `npu:N` (`--gres`): sites name it differently, so set `hydra.launcher.gres=...`
to match yours. Every value can be overridden on the command line.
"""

from __future__ import annotations

import os

ACCELERATOR_CPUS_PER_TASK = 32  # one task per node runs torchrun and its data workers


def cpus_per_task(device: str) -> int:
    return os.cpu_count() or 1 if device == "cpu" else ACCELERATOR_CPUS_PER_TASK


def gpus_per_node(device: str, devices_per_node) -> int | None:
    return int(devices_per_node) if device == "cuda" and devices_per_node else None


def gres(device: str, devices_per_node) -> str | None:
    return f"npu:{int(devices_per_node)}" if device == "npu" and devices_per_node else None


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    for name, fn in (("cpus_per_task", cpus_per_task), ("gpus_per_node", gpus_per_node), ("gres", gres)):
        OmegaConf.register_new_resolver(f"mixexp.slurm_{name}", fn, replace=True)
