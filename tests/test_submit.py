"""Submitting jobs elsewhere (hydra-submitit-launcher) needs a picklable task; a failed submission is one line.

The jobs on a real SLURM cluster are in test_slurm.py; these run anywhere.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr

import cloudpickle

from conftest import run_train
from mixexp import cli


def test_the_task_pickles_by_reference_while_stderr_is_held():
    """What Hydra hands to submitit is cli.Task; with stderr held (as in hydra_entry), pickling it must not
    capture the held stream or the real one (cloudpickle refuses files open for writing)."""
    task = cli.Task("mixexp.cli:run_job")
    held = cli._HeldStderr(sys.stderr)
    with redirect_stderr(held):
        payload = cloudpickle.dumps(task)
    assert b"mixexp.cli" in payload and len(payload) < 200  # a reference to the class, not its code
    restored = cloudpickle.loads(payload)
    assert type(restored) is cli.Task and restored.job == "mixexp.cli:run_job"


def test_a_held_stream_itself_cannot_be_pickled():
    """The failure the Task class avoids (so the test above can fail): the old closure captured this."""
    try:
        cloudpickle.dumps(cli._HeldStderr(io.open("/dev/null", "w")))
    except Exception as exc:  # noqa: BLE001 - cloudpickle raises PicklingError or TypeError by version
        assert "pickle" in str(exc).lower()
    else:
        raise AssertionError("a stream open for writing pickled")


def test_submitit_local_runs_the_pickled_job(tmp_path):
    """hydra/launcher=submitit_local pickles the launcher with the task and runs it in another process."""
    sweep = tmp_path / "sweep"
    result = run_train("-m", "hydra/launcher=submitit_local", "model=mixtral_8x7b", "parallel=tp8_pp2_cp4",
                       "hardware=ascend_910b", "cluster.nnodes=8", "train.seq_length=4096",
                       "train.global_batch_size=32", "train.micro_batch_size=1", "train.dry_run=true",
                       f"hydra.sweep.dir={sweep}", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((sweep / "0_tp8_pp2_cp4" / "summary.json").read_text())
    assert summary["status"] == "dry_run" and summary["world_size"] == 64
    assert list(sweep.glob(".submitit/*/*_result.pkl")), "no result pickle: the job did not run through submitit"


def test_slurm_without_slurm_is_one_line(tmp_path):
    """No SLURM commands on PATH: exit 1 and one line naming the cause, before anything starts."""
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_train("-m", "hydra/launcher=slurm", "train.iters=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       env={"PATH": str(empty)}, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ['error: SubmissionError: submitting to SLURM failed: Could not detect "srun", '
                     'are you indeed on a slurm cluster?'], result.stderr
