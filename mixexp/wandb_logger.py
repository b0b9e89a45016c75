"""Weights & Biases reporting that can never take training down.

`WandbLogger` is made by the training loop on the reporting rank when
`logger=wandb`: one W&B run per Hydra job, in a group named after the sweep,
with the layout (tp, pp, ep, cp, dp, vpp, world_size) as top-level config keys
so W&B's runs table, parallel-coordinates and bar-chart panels compare layouts
directly. Step metrics go to the history, the job's summary.json to the run
summary.

Failure policy: any exception from wandb (import, init, log, finish) is caught,
warned about once, and the logger turns itself off. `wandb.init` waits at most
`init_timeout_s`, `finish` at most `finish_timeout_s` for uploads (the data
stays on disk for `wandb sync`). The mode is offline unless WANDB_API_KEY is
set (or WANDB_MODE / `mode` say otherwise). wandb is imported on first use.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

LAYOUT_KEYS = ("tp", "pp", "ep", "cp", "dp", "vpp", "world_size")


def resolve_mode(mode: str | None) -> str:
    """`mode` if given, else WANDB_MODE, else online with WANDB_API_KEY and offline without."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def sweep_group(sweep_dir: str | os.PathLike) -> str:
    """The W&B group of a sweep whose config names none: its directory's last two parts.

    `multirun/2026-11-28/19-21-33` -> `2026-11-28_19-21-33`. The training jobs
    (from HydraConfig's sweep.dir) and compare use this same name.
    """
    return "_".join(Path(sweep_dir).resolve().parts[-2:])


def _git_root(start: Path) -> str | None:
    for path in (start, *start.parents):
        if (path / ".git").exists():
            return str(path)
    return None


def _settings(wandb: Any, init_timeout_s: float, finish_timeout_s: float) -> Any:
    root = _git_root(Path.cwd().resolve())
    return wandb.Settings(init_timeout=init_timeout_s, finish_timeout=finish_timeout_s, silent=True,
                          git_root=root, disable_git=root is None)


class WandbLogger:
    """One W&B run; every method is a no-op once W&B has failed (after one warning)."""

    def __init__(self, project: str, group: str | None, name: str, config: dict[str, Any], layout: dict[str, Any],
                 run_dir: str, mode: str | None = None, entity: str | None = None, tags: Iterable[str] = (),
                 init_timeout_s: float = 30.0, finish_timeout_s: float = 120.0) -> None:
        self.run: Any = None
        self.mode = resolve_mode(mode)
        self._warned = False
        if self.mode == "disabled":
            return
        run_config = dict(config)
        run_config.update({k: layout[k] for k in LAYOUT_KEYS if k in layout})
        try:
            import wandb

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(project=project, group=group, name=name, entity=entity, tags=list(tags),
                                  config=run_config, dir=run_dir, mode=self.mode, job_type="train",
                                  reinit="finish_previous",
                                  settings=_settings(wandb, init_timeout_s, finish_timeout_s))
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            self._disable("init", e)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def _disable(self, what: str, error: BaseException) -> None:
        if not self._warned:
            warnings.warn(f"W&B {what} failed, W&B logging is off for this run: {type(error).__name__}: {error}",
                          RuntimeWarning, stacklevel=3)
            self._warned = True
        self.run = None

    def log_step(self, step: int, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            # commit now: a buffered last step would land after finish's summary and overwrite
            # its averages with the last step's values (one call per step, steps increasing)
            self.run.log(dict(metrics), step=step, commit=True)
        except Exception as e:  # noqa: BLE001
            self._disable("log", e)

    def finish(self, summary: dict[str, Any], status: str) -> None:
        """Put the summary (throughput, MFU, memory, ...) and status in the run summary, then close it."""
        if self.run is None:
            return
        try:
            self.run.summary.update({**summary, "status": status})
            self.run.finish(exit_code=0 if status in ("ok", "dry_run") else 1)
        except Exception as e:  # noqa: BLE001
            self._disable("finish", e)
        self.run = None


def log_comparison_table(rows: Sequence[dict[str, Any]], project: str, group: str | None, *,
                         entity: str | None = None, mode: str | None = None, run_dir: str | None = None,
                         png: str | os.PathLike | None = None, init_timeout_s: float = 30.0,
                         finish_timeout_s: float = 120.0) -> bool:
    """Log compare's rows as a W&B Table (key "comparison") in a run of the sweep's group.

    The run has job_type "compare"; the chart PNG is attached when given. Returns
    False (after a warning) instead of raising when W&B fails.
    """
    mode = resolve_mode(mode)
    if mode == "disabled" or not rows:
        return False
    columns = list(rows[0])
    run = None
    try:
        import wandb

        run = wandb.init(project=project, group=group, entity=entity, name=f"compare-{group or 'sweep'}",
                         job_type="compare", dir=run_dir, mode=mode, reinit="finish_previous",
                         settings=_settings(wandb, init_timeout_s, finish_timeout_s))
        data = [[_cell(r.get(k)) for k in columns] for r in rows]
        payload: dict[str, Any] = {"comparison": wandb.Table(columns=columns, data=data)}
        if png is not None and Path(png).is_file():
            payload["comparison_chart"] = wandb.Image(str(png))
        run.log(payload)
        run.finish()
        return True
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"W&B comparison table not logged: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass
        return False


def _cell(value: Any) -> Any:
    """W&B Table cells: numbers and strings (lists joined); None stays None."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
