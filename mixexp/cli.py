"""Hydra entry points with the project's exit-code contract.

0: done. 1: the run failed (a rank crashed, training diverged). 2: the
configuration is invalid; one line on stderr says what and how to fix it.
In a --multirun sweep a failed job writes its summary and the sweep goes on;
the sweep exits non-zero at the end when any job failed.
"""

from __future__ import annotations

import importlib
import io
import re
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

    from mixexp.run_lock import RunDirBusy, lock_run_dir

    run_dir = _run_dir()
    try:  # before anything is written: the directory may be another run's
        lock_run_dir(run_dir, cfg.cluster)
    except RunDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        summary = train(cfg, run_dir)
    except ConfigError as exc:
        failed_summary(run_dir, cfg, str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if summary.get("status") in ("failed", "diverged"):
        print(f"error: run {summary['status']}: {summary['error']}", file=sys.stderr, flush=True)
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


_held: _HeldStderr | None = None


def jobs_starting() -> None:
    """The command line was accepted: let stderr through (also called by launchers that submit the jobs
    elsewhere, such as mixexp.slurm_launcher, so a sweep's own output is not held until its end)."""
    global _job_started
    if not _job_started:
        _job_started = True
        if _held is not None:
            _held.real.write(_held.getvalue())


def record_exit(code: int) -> None:
    """A job's exit code; the sweep exits with the worst. (Launchers call it for jobs run elsewhere.)"""
    global _exit_code
    _exit_code = max(_exit_code, code)


class Task:
    """What Hydra runs for each job: `module:function` called with the job's config.

    A module-level class, not a closure, so that submitit (hydra/launcher=slurm, submitit_local)
    pickles it by reference: a closure is pickled by value with everything it captures (the held
    stderr and its real stream), which cannot be pickled.
    """

    def __init__(self, job: str):
        self.job = job

    def __call__(self, cfg) -> int:
        jobs_starting()
        module, func = self.job.split(":")
        code = getattr(importlib.import_module(module), func)(cfg)
        record_exit(code)
        if code and not _is_multirun():
            sys.exit(code)
        return code


def _traceback_cause(captured: str) -> str | None:
    """An exception Hydra reported outside a job (a launcher failing to submit): its last line names it."""
    lines = [ln.strip() for ln in captured.splitlines() if ln.strip()]
    if "Traceback (most recent call last):" not in lines:
        return None
    lines = [ln for ln in lines if not ln.startswith("Set the environment variable HYDRA_FULL_ERROR")]
    return re.sub(r"^(?:\w+\.)+(?=\w+: )", "", lines[-1]) if lines else None  # the exception's bare name


def hydra_entry(config_name: str, job: str) -> None:
    global _held
    main = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base=None)(Task(job))
    held = _held = _HeldStderr(sys.stderr)
    try:
        with redirect_stderr(held):
            main()
    except SystemExit as exc:
        if exc.code == 1 and not _job_started:
            cause = _traceback_cause(held.getvalue())
            if cause:  # an error outside any job, e.g. while submitting: the run failed
                print(f"error: {cause}", file=sys.stderr)
                sys.exit(1)
            print(f"error: {_hydra_error_line(held.getvalue())}", file=sys.stderr)  # Hydra rejected the command line
            sys.exit(2)
        if not _job_started:
            sys.stderr.write(held.getvalue())
        raise
    if not _job_started:  # e.g. --help or --cfg: nothing ran
        sys.stderr.write(held.getvalue())
    sys.exit(_exit_code)
