"""Hydra callbacks. Registered through conf/hydra/callbacks/compare.yaml.

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
