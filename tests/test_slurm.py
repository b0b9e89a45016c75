"""Sweeps, failures, cancellation, preemption and two nodes on a real SLURM cluster (`make slurm-up`).

The cluster is tests/slurm/cluster.sh's: slurmctld, slurmdbd (sacct) and two slurmd on this host as the
nodes mixexp-n1 and mixexp-n2, CPUs=2 each. Every job goes through `python train.py -m
hydra/launcher=slurm ...` as a user would type it: sbatch, srun, submitit's SIGUSR2 and requeue.
Outside CI these tests skip when no cluster answers; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_jsonl, run_train

SKIP_REASON = "no SLURM cluster: make slurm-up"
TINY = ("data=synthetic", "train.seq_length=64", "train.global_batch_size=4", "train.micro_batch_size=2")


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not found"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if out.returncode:
        return out.stderr.strip() or f"sinfo exited {out.returncode}"
    nodes = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    usable = [n for n, state in nodes.items() if state.rstrip("*") in ("idle", "mixed", "allocated", "completing")]
    if len(usable) < 2:
        return f"need 2 usable nodes, sinfo says {nodes or 'none'}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{SKIP_REASON} ({problem})")
        pytest.skip(SKIP_REASON)


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def sweep_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb_home"),
               MIXEXP_CACHE=str(REPO / ".cache"), PYTHONPATH=str(REPO))  # the jobs inherit this environment
    return env


def start_sweep(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """`python train.py -m hydra/launcher=slurm ARGS` in the background; its output goes to a file."""
    sweep, log = tmp_path / name, tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "train.py", "-m", "hydra/launcher=slurm", *args,
                             f"hydra.sweep.dir={sweep}"], cwd=REPO, env=sweep_env(tmp_path),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    return proc, sweep, log


def finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the sweep did not end within {timeout} s:\n{log.read_text()[-3000:]}")
    return log.read_text()


def job_ids(log: Path, count: int, timeout: float = 120) -> list[str]:
    """The SLURM job ids the launcher printed ("SLURM jobs: 12_0, 12_1")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"SLURM jobs: (.+)", log.read_text())
        if found:
            ids = [j.strip() for j in found.group(1).split(",")]
            assert len(ids) == count, ids
            return ids
        time.sleep(1)
    raise AssertionError(f"no job ids in the sweep's output:\n{log.read_text()[-3000:]}")


def wait_until(what: str, check, timeout: float = 600, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def sacct_states(job_id: str) -> list[str]:
    """Every record of the job (a requeued job has one per run), oldest first."""
    out = slurm("sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", job_id)
    return [line.split("|")[1] for line in out.splitlines() if line.split("|")[0] == job_id]


def losses(job_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(job_dir / "metrics.jsonl")}


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def comparison(sweep: Path) -> dict[str, dict]:
    with (sweep / "comparison.csv").open() as f:
        return {row["job"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def single_dp2_sweep(tmp_path_factory):
    """The issue's command, with no launcher overrides: resources come from hardware=cpu."""
    tmp = tmp_path_factory.mktemp("slurm_sweep")
    proc, sweep, log = start_sweep(tmp, "sweep", "parallel=single,dp2", "train.iters=2", *TINY,
                                   "logger=wandb", "logger.project=mixexp-slurm")
    ids = job_ids(log, 2)
    output = finish(proc, log)
    assert proc.returncode == 0, output[-4000:]
    return sweep, ids, output


def test_sweep_completes_with_comparison_and_wandb_group(single_dp2_sweep):
    from test_wandb_logger import of_type, read_records

    sweep, ids, output = single_dp2_sweep
    assert [sacct_states(j) for j in ids] == [["COMPLETED"], ["COMPLETED"]]
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert f"#SBATCH --cpus-per-task={os.cpu_count()}" in script and "gpus" not in script  # hardware=cpu
    single, dp2 = sweep / "0_single", sweep / "1_dp2"
    assert summary(single)["status"] == summary(dp2)["status"] == "ok"
    assert summary(dp2)["world_size"] == 2 and summary(dp2)["layout"]["dp"] == 2
    assert losses(dp2) == pytest.approx(losses(single), abs=1e-4) and len(losses(single)) == 2
    rows = comparison(sweep)
    assert {job: row["status"] for job, row in rows.items()} == {"0_single": "ok", "1_dp2": "ok"}
    assert {row["label"] for row in rows.values()} == {"single", "dp2"}
    assert (sweep / "comparison.png").stat().st_size > 1000
    assert "2 jobs, ranked by tokens/s per device" in output
    groups = set()
    for job in (single, dp2):
        (run,) = of_type(read_records(job), "run")
        groups.add(run.run_group)
        assert run.project == "mixexp-slurm"
    assert groups == {"_".join(sweep.resolve().parts[-2:])}  # one group, named after the sweep


def test_failed_and_cancelled_jobs_are_rows_with_their_reasons(tmp_path):
    """Three dp2 jobs: one trains, one has a rank that raises, one hangs and is cancelled with scancel."""
    proc, sweep, log = start_sweep(tmp_path, "faults", "parallel=dp2", "train.fault=null,raise,hang",
                                   "train.fault_rank=1", "train.fault_step=2", "train.iters=2", *TINY)
    ok, raising, hanging = job_ids(log, 3)
    hung_dir = sweep / "2_dp2"
    wait_until("the hanging job's first step", lambda: (hung_dir / "metrics.jsonl").is_file()
               and read_jsonl(hung_dir / "metrics.jsonl"))
    slurm("scancel", hanging)
    output = finish(proc, log)
    assert proc.returncode == 1, output[-4000:]  # a job failed: the sweep says so
    assert summary(sweep / "0_dp2")["status"] == "ok"
    assert summary(sweep / "1_dp2")["error"] == "rank 1: RuntimeError: injected fault at step 2"
    assert summary(hung_dir)["error"].startswith(f"SLURM job {hanging} ended CANCELLED by ")
    rows = comparison(sweep)
    assert [rows[j]["status"] for j in ("0_dp2", "1_dp2", "2_dp2")] == ["ok", "failed", "failed"]
    assert rows["1_dp2"]["error"] == "rank 1: RuntimeError: injected fault at step 2"
    assert rows["2_dp2"]["error"].startswith(f"SLURM job {hanging} ended CANCELLED")
    assert sacct_states(ok) == ["COMPLETED"] and sacct_states(raising) == ["COMPLETED"]
    assert sacct_states(hanging)[-1].startswith("CANCELLED")


def test_a_refused_submission_is_one_line(tmp_path):
    result = run_train("-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=64", "train.iters=2",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: SubmissionError: submitting to SLURM failed: sbatch: error: Batch job submission failed: "
        "More processors requested than permitted"], result.stderr


SIGNAL_DELAY_S = 60  # SIGUSR2 this long before the limit: time to finish the step and save, on a busy machine too


def test_time_limit_preemption_saves_requeues_and_resumes_to_the_same_losses(tmp_path, single_dp2_sweep):
    """SIGUSR2 `signal_delay_s` before the time limit: the workers save, submitit requeues the job, the
    requeued job resumes from `latest` and ends with the losses of an uninterrupted run.

    SLURM checks time limits every 30 s and signals up to that much early, and start-up on 2 shared cores
    takes 15-40 s, so a job submitted with a one-minute limit could be signalled before its first step.
    The job is submitted with a long limit, which is cut short once it has trained a step (`scontrol
    update TimeLimit=...`, as an operator would: the signal comes within SLURM's 30 s tick), and given
    back after the requeue. Its length is about a minute of steps at the step time the sweep measured."""
    sweep_1node, _, _ = single_dp2_sweep
    step_s = read_jsonl(sweep_1node / "0_single" / "metrics.jsonl")[-1]["step_time_s"]
    iters = min(400, max(8, math.ceil(60 / step_s)))
    args = ("parallel=single", *TINY, f"train.iters={iters}", f"ckpt.preempt_grace_s={SIGNAL_DELAY_S}")
    proc, sweep, log = start_sweep(tmp_path, "preempt", *args, "hydra.launcher.timeout_min=10",
                                   f"hydra.launcher.signal_delay_s={SIGNAL_DELAY_S}", "hydra.launcher.max_num_timeout=1")
    reference = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={tmp_path / 'reference'}"],
                                 cwd=REPO, env=sweep_env(tmp_path), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    (job,) = job_ids(log, 1)
    job_dir = sweep / "0_single"
    wait_until("the first step", lambda: (job_dir / "metrics.jsonl").is_file() and read_jsonl(job_dir / "metrics.jsonl"))
    h, m, s = re.search(r"RunTime=(\d+):(\d+):(\d+)", slurm("scontrol", "show", "job", job)).groups()
    elapsed_s = int(h) * 3600 + int(m) * 60 + int(s)
    slurm("scontrol", "update", f"JobId={job}", f"TimeLimit={math.ceil((elapsed_s + SIGNAL_DELAY_S + 35) / 60)}")
    wait_until("the requeue", lambda: "REQUEUED" in sacct_states(job), timeout=300)
    slurm("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    output = finish(proc, log)
    assert proc.returncode == 0, output[-4000:]
    _, ref_err = reference.communicate(timeout=900)
    assert reference.returncode == 0, ref_err[-3000:]

    job_log = "\n".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.out")))
    assert "Caught signal SIGUSR2" in job_log and f"Requeued job {job} (0 remaining timeouts)" in job_log
    saved = re.findall(r"\[mixexp\] saved .*iter_(\d+)", job_log)
    resumed = re.findall(r"\[mixexp\] loaded step (\d+) from", job_log)
    assert len(saved) == 1 and list(map(int, resumed)) == list(map(int, saved)), job_log[-3000:]
    assert 0 < int(saved[0]) < iters
    assert "stopped by a signal after step" in job_log
    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    assert summary(job_dir)["status"] == "ok"
    got, want = losses(job_dir), losses(tmp_path / "reference")
    assert sorted(got) == list(range(1, iters + 1))
    assert got == want  # exact: the resumed run is the uninterrupted one


def test_two_nodes_train_together_and_match_single(tmp_path, single_dp2_sweep):
    """cluster.nnodes=2: one SLURM task on each node runs torchrun for its node (node rank from
    SLURM_NODEID, rendezvous at the first node of the allocation); dp2 across them matches `single`."""
    sweep_1node, _, _ = single_dp2_sweep
    proc, sweep, log = start_sweep(tmp_path, "nodes2", "cluster.nnodes=2", "parallel=dp2", "train.iters=2", *TINY)
    (job,) = job_ids(log, 1)
    output = finish(proc, log)
    assert proc.returncode == 0, output[-4000:]
    out = slurm("sacct", "-n", "-P", "-o", "JobID,NodeList,State", "-j", job)
    assert f"{job}|mixexp-n[1-2]|COMPLETED" in out.splitlines(), out
    job_dir = sweep / "0_dp2"
    worker = (job_dir / "worker_config.yaml").read_text()
    assert "nnodes: 2" in worker and "devices_per_node: 1" in worker and "master_addr: mixexp-n1" in worker
    job_log = "\n".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*_log.out")))
    assert "node=0(2)" in job_log and "node=1(2)" in job_log  # submitit's environment on each node
    assert summary(job_dir)["status"] == "ok" and summary(job_dir)["world_size"] == 2
    assert losses(job_dir) == pytest.approx(losses(sweep_1node / "0_single"), abs=1e-4)
