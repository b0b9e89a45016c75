"""Hydra callbacks. Registered through conf/hydra/callbacks/compare.yaml.

`LockRunDir` takes the run directory's lock (mixexp.run_lock) before Hydra writes `.hydra/`
into it, so a second run in a busy directory is refused before it overwrites anything.

`CompareOnMultirunEnd` runs `mixexp.compare` on the sweep directory once every
job of a `--multirun` has finished, so a sweep ends with its table, CSV and
chart. A comparison that fails prints one warning; it never fails the sweep.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CompareOnMultirunEnd(Callback):
    def __init__(self, wandb: bool | None = None) -> None:
        # None: log the table to W&B only when the sweep ran with logger=wandb.
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            from mixexp.compare import compare

            compare(str(config.hydra.sweep.dir), wandb=self.wandb)
        except Exception as e:  # noqa: BLE001 - a comparison must not fail the sweep
            print(f"warning: comparison of the sweep failed: {type(e).__name__}: {e}", file=sys.stderr)


class LockRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import os
        from pathlib import Path

        from mixexp.run_lock import RunDirBusy, lock_run_dir

        try:
            lock_run_dir(Path(os.path.abspath(str(config.hydra.run.dir))), config.cluster)
        except RunDirBusy as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
