"""Shared helpers: compose configs like train.py does, run train.py as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def compose(*overrides: str):
    """The root config `python train.py OVERRIDES` composes."""
    from mixexp.megatron_args import compose as compose_train

    return compose_train(list(overrides))


def run_train(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repository root; stdout and stderr captured."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("MIXEXP_CACHE", str(REPO / ".cache"))
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_layout_sweep(sweep_dir: Path, layouts: list[str], *overrides: str, timeout: float = 1800) -> dict[str, Path]:
    """`python train.py -m parallel=LAYOUTS OVERRIDES` into `sweep_dir`; each layout's job directory."""
    import yaml

    result = run_train("-m", f"parallel={','.join(layouts)}", *overrides, f"hydra.sweep.dir={sweep_dir}",
                       timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = {}
    for job in sweep_dir.iterdir():
        overrides_file = job / ".hydra" / "overrides.yaml"
        if overrides_file.exists():
            layout = next(o.split("=", 1)[1] for o in yaml.safe_load(overrides_file.read_text())
                          if o.startswith("parallel="))
            jobs[layout] = job
    assert sorted(jobs) == sorted(layouts)
    return jobs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture
def repo() -> Path:
    return REPO
