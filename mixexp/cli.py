"""Hydra entry points with the project's exit-code contract.

0: done. 1: the run failed (a rank crashed, training diverged). 2: the
configuration is invalid; one line on stderr says what and how to fix it.
In a --multirun sweep a failed job writes its summary and the sweep goes on;
the sweep exits non-zero at the end when any job failed.
"""

from __future__ import annotations

import importlib
import io
import sys
from contextlib import redirect_stderr
from pathlib import Path

import hydra

import mixexp.config  # noqa: F401  (registers the structured configs)
from mixexp.errors import ConfigError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
_exit_code = 0
_job_started = False


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_job(cfg) -> int:
    """One Hydra job of train.py; returns its exit code."""
    from mixexp.app import failed_summary, train

    run_dir = _run_dir()
    try:
        summary = train(cfg, run_dir)
    except ConfigError as exc:
        failed_summary(run_dir, cfg, str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if summary.get("status") == "failed":
        print(f"error: run failed: {summary['error']}", file=sys.stderr, flush=True)
        return 1
    if summary.get("status") == "does_not_fit":
        print(f"error: does not fit: {summary['error']}", file=sys.stderr, flush=True)
        return 1
    print(f"[mixexp] summary: {run_dir / 'summary.json'}", flush=True)
    return 0


def _hydra_error_line(captured: str) -> str:
    """Hydra explains a bad override over several lines; keep the one that names the problem."""
    lines = [ln.strip() for ln in captured.splitlines() if ln.strip()]
    if lines and "Could not find" in lines[0] and any(ln.startswith("Available options") for ln in lines):
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Available options")) + 1
        names = []
        for ln in lines[start:]:
            if " " in ln or ":" in ln:  # the option list ends where Hydra's search path starts
                break
            if not ln.endswith("_schema"):
                names.append(ln)
        return f"{lines[0]} (available: {', '.join(names)})"
    lines = [ln for ln in lines if not ln.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    for ln in lines:
        if any(word in ln for word in ("not in", "Could not", "Error", "error", "Invalid", "Value '")):
            detail = next((d for d in lines if d.startswith(("Key '", "Value '"))), None)
            return ln if detail is None or detail == ln else f"{ln} ({detail})"
    return lines[0] if lines else "invalid command line"


class _HeldStderr(io.StringIO):
    """Holds stderr until the first job starts (Hydra's command-line errors are shortened from
    it), then writes through, so a job's progress bars and warnings show as they happen."""

    def __init__(self, real):
        super().__init__()
        self.real = real

    def write(self, text: str) -> int:
        return self.real.write(text) if _job_started else super().write(text)

    def flush(self) -> None:
        if _job_started:
            self.real.flush()


def hydra_entry(config_name: str, job: str) -> None:
    module, func = job.split(":")

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)
    def main(cfg) -> None:
        global _exit_code, _job_started
        if not _job_started:
            _job_started = True
            held.real.write(held.getvalue())
        code = getattr(importlib.import_module(module), func)(cfg)
        _exit_code = max(_exit_code, code)
        if code and not _is_multirun():
            sys.exit(code)

    held = _HeldStderr(sys.stderr)
    try:
        with redirect_stderr(held):
            main()
    except SystemExit as exc:
        if exc.code == 1 and not _job_started:  # Hydra rejected the command line
            print(f"error: {_hydra_error_line(held.getvalue())}", file=sys.stderr)
            sys.exit(2)
        if not _job_started:
            sys.stderr.write(held.getvalue())
        raise
    if not _job_started:  # e.g. --help or --cfg: nothing ran
        sys.stderr.write(held.getvalue())
    sys.exit(_exit_code)
