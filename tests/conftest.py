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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture
def repo() -> Path:
    return REPO
