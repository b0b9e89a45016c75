"""Checkpoints in real runs: atomic saves, exact resume, resume into another layout, preemption.

Seven short runs on synthetic data (fp32, CPU, gloo):
- single, saving every 2 steps, killed (SIGKILL) in the middle of its step-4 save; relaunched in the
  same run dir it resumes from step 2 and reaches the killed run's losses at steps 3-4 exactly;
- tp2 with the distributed optimizer, uninterrupted (6 steps, the reference); the same run stopped
  by SIGTERM after a step or two saves, exits and, relaunched, reaches the reference's losses exactly;
- the tp2 checkpoint loaded by `single`, and the single checkpoint by pp2: the next losses equal.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_jsonl, run_train
from test_faults import processes_mentioning

SYNTH = ("data=synthetic",)
TP2 = ("parallel=tp2", "parallel.distributed_optimizer=true", "optim.lr_decay_iters=50", *SYNTH)


def losses(run_dir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")}


def latest(run_dir) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def assert_ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def single_killed_and_resumed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    args = (*SYNTH, "train.iters=4", "ckpt.save_interval=2", f"hydra.run.dir={run_dir}")
    killed = run_train(*args, "ckpt.fault_during_save=4")
    uninterrupted = losses(run_dir)  # every step ran; only the last save died
    state_after_kill = (latest(run_dir), sorted(p.name for p in (run_dir / "checkpoints").iterdir()))
    resumed = run_train(*args)
    return run_dir, killed, uninterrupted, state_after_kill, resumed


def test_a_save_killed_midway_leaves_the_previous_checkpoint_latest(single_killed_and_resumed):
    _, killed, _, (pointer, entries), _ = single_killed_and_resumed
    assert killed.returncode == 1
    assert pointer == "iter_0000002"
    assert entries == ["iter_0000002", "iter_0000004.tmp", "latest"]


def test_resume_reaches_the_uninterrupted_losses_exactly(single_killed_and_resumed):
    run_dir, _, uninterrupted, _, resumed = single_killed_and_resumed
    assert_ok(resumed)
    assert "[mixexp] loaded step 2 from" in resumed.stdout
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    after = losses(run_dir)
    assert after == uninterrupted  # steps 1-2 kept from the first launch, 3-4 recomputed bit for bit
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert latest(run_dir) == "iter_0000004"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_0000002", "iter_0000004", "latest"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"


@pytest.fixture(scope="module")
def tp2_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tp2_reference")
    result = run_train(*TP2, "train.iters=6", "ckpt.save_interval=2", f"hydra.run.dir={run_dir}")
    assert_ok(result)
    return run_dir


def test_sigterm_saves_exits_and_the_relaunch_resumes_exactly(tp2_reference, tmp_path):
    reference = losses(tp2_reference)
    env = dict(os.environ, MIXEXP_CACHE=str(REPO / ".cache"))
    args = [sys.executable, "train.py", *TP2, f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args + ["train.iters=50"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
            assert time.time() < deadline and proc.poll() is None, "training never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped = max(losses(tmp_path))
    assert 1 <= stopped < 6
    assert f"stopped by a signal after step {stopped}" in output
    assert latest(tmp_path) == f"iter_{stopped:07d}"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "preempted"
    time.sleep(1)
    assert processes_mentioning(str(tmp_path)) == []

    resumed = run_train(*TP2, "train.iters=6", f"hydra.run.dir={tmp_path}")  # same run dir: resumes by itself
    assert_ok(resumed)
    assert f"[mixexp] loaded step {stopped} from" in resumed.stdout
    assert losses(tmp_path) == reference


def test_a_tp2_checkpoint_loads_into_single(tp2_reference, tmp_path):
    reference = losses(tp2_reference)
    result = run_train(*SYNTH, "optim.lr_decay_iters=50", "train.iters=6",
                       f"ckpt.load={tp2_reference / 'checkpoints' / 'iter_0000004'}", f"hydra.run.dir={tmp_path}")
    assert_ok(result)
    got = losses(tmp_path)
    assert sorted(got) == [5, 6]
    for step in (5, 6):
        assert got[step] == pytest.approx(reference[step], rel=1e-5), step


def test_a_single_checkpoint_loads_into_pp2_with_the_distributed_optimizer(single_killed_and_resumed, tmp_path):
    single_dir, _, uninterrupted, _, _ = single_killed_and_resumed
    result = run_train("parallel=pp2", "parallel.distributed_optimizer=true", *SYNTH, "train.iters=4",
                       f"ckpt.load={single_dir / 'checkpoints' / 'iter_0000002'}", f"hydra.run.dir={tmp_path}")
    assert_ok(result)
    got = losses(tmp_path)
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(uninterrupted[step], rel=1e-5), step


def test_a_missing_checkpoint_is_a_config_error(tmp_path):
    result = run_train(*SYNTH, f"ckpt.load={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: ckpt.load={tmp_path}/nowhere is neither a checkpoint (no metadata.json) "
        "nor a directory with a 'latest' file")
