"""Checks of the run's own settings (optimizer, sequence length, NaN policy, fault knobs).

Each would otherwise be answered late: a NaN learning rate trains NaNs, a sequence longer than
the model's positions makes every step crawl, a typo in `train.fault` hangs for half an hour.
Pure Python, called by `mixexp.layout.validate` before anything launches.
"""

from __future__ import annotations

import math
from typing import Any

from mixexp.errors import ConfigError

ON_NAN = ("stop", "skip")
FAULTS = ("raise", "hang", "nan")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _non_negative(name: str, value: float) -> None:
    _check(math.isfinite(value) and value >= 0, f"{name}={value} must be a finite number >= 0")


def check_optimizer(optim: Any) -> None:
    for key in ("lr", "min_lr", "weight_decay", "clip_grad", "adam_eps"):
        _non_negative(f"optim.{key}", optim[key])
    _check(optim.min_lr <= optim.lr, f"optim.min_lr={optim.min_lr} exceeds optim.lr={optim.lr}; lower optim.min_lr")
    for key in ("adam_beta1", "adam_beta2"):
        _check(0 <= optim[key] < 1, f"optim.{key}={optim[key]} must be in [0, 1)")


def check_train(cfg: Any, world_size: int) -> None:
    t, m = cfg.train, cfg.model
    _check(1 <= t.seq_length <= m.max_position_embeddings,
           f"train.seq_length={t.seq_length} must be between 1 and model.max_position_embeddings="
           f"{m.max_position_embeddings}")
    _check(t.collective_timeout_s >= 1, f"train.collective_timeout_s={t.collective_timeout_s} must be at least 1")
    _check(t.on_nan in ON_NAN, f"train.on_nan={t.on_nan} must be one of {'|'.join(ON_NAN)}")
    _check(t.max_consecutive_skips >= 0, f"train.max_consecutive_skips={t.max_consecutive_skips} must be >= 0")


def check_faults(cfg: Any, world_size: int) -> None:
    """The fault-injection knobs name a real fault, rank and step (a typo must not hang a test)."""
    t = cfg.train
    if t.fault is not None:
        _check(t.fault in FAULTS, f"train.fault={t.fault} must be one of {'|'.join(FAULTS)} (or null)")
        _check(0 <= t.fault_rank < world_size,
               f"train.fault_rank={t.fault_rank} must be in [0, world size {world_size})")
        _check(1 <= t.fault_step <= t.iters, f"train.fault_step={t.fault_step} must be in [1, train.iters={t.iters}]")
    step = cfg.ckpt.fault_during_save
    if step is not None:
        _check(1 <= step <= t.iters, f"ckpt.fault_during_save={step} must be in [1, train.iters={t.iters}]")


def check_run_settings(cfg: Any, world_size: int) -> None:
    check_optimizer(cfg.optim)
    check_train(cfg, world_size)
    check_faults(cfg, world_size)
