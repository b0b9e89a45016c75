"""Answers that need no model come before torch and megatron-core are imported, by design.

`python -X importtime train.py ...` lists every module the launcher process imports (on stderr, one
`import time:` line each); for help, the composed config, a bad configuration and a dry run of a bad
configuration, neither torch nor megatron (nor transformers) may be among them. Child processes (a dry
run's builder, torchrun) are not traced: the launcher is what answers the user.
"""

import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "megatron", "transformers")


def launcher_imports(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([sys.executable, "-X", "importtime", "train.py", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


@pytest.mark.parametrize("args, code", [
    (("--help",), 0),
    (("--cfg", "job", "parallel=tp2"), 0),
    (("parallel.tp=3",), 2),  # a layout rule
    (("parallel.tpp=3",), 2),  # an unknown key (Hydra)
    (("model=mixtral_9x9b",), 2),  # an unknown option (Hydra)
    (("parallel.tp=3", "train.dry_run=true"), 2),  # a dry run of a bad layout
    (("model=mixtral_8x7b", "parallel.ep=3", "train.dry_run=true"), 2),
])
def test_no_heavy_import_before_the_answer(args, code, tmp_path):
    result, modules = launcher_imports(*args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == code, result.stderr[-2000:]
    assert "mixexp.cli" in modules  # the trace works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"{args} imported {heavy[:5]}"
    if code == 2:
        errors = [ln for ln in result.stderr.splitlines() if not ln.startswith("import time:")]
        assert len(errors) == 1 and errors[0].startswith("error: ")


def test_a_valid_dry_run_builds_in_a_child_process(tmp_path):
    result, modules = launcher_imports("model=mixtral_8x7b", "parallel=tp2_ep8", "train.dry_run=true",
                                       f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]  # built, and 8x7B does not fit a 24 GB CPU device
    assert "[dry run]" in result.stdout
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
