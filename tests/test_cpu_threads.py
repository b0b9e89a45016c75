"""Every job of a CPU comparison gets the same torch threads in total, split evenly over its ranks."""

import csv
import json
import os

from conftest import compose, run_train
from mixexp.launch import cpu_threads_per_rank, worker_env


def test_the_job_total_is_split_over_the_ranks():
    cfg = compose("hardware.cpu_threads=4")
    assert [cpu_threads_per_rank(cfg, n) for n in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert worker_env(cfg, 2)["OMP_NUM_THREADS"] == "2" and worker_env(cfg, 2)["MKL_NUM_THREADS"] == "2"


def test_a_sweep_gives_each_job_the_same_threads_and_says_so(tmp_path):
    # OMP_NUM_THREADS=1 in the caller's environment is a per-process count: the job's total wins over it.
    result = run_train("-m", "parallel=single,dp2", "data=synthetic", "train.iters=1", "train.seq_length=64",
                       "hardware.cpu_threads=2", f"hydra.sweep.dir={tmp_path}", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    threads = {p.parent.name: json.loads(p.read_text())["cpu_threads"] for p in tmp_path.glob("*/summary.json")}
    assert threads == {"0_single": [2], "1_dp2": [1, 1]}  # what torch.get_num_threads() said in each rank
    rows = {r["label"]: r for r in csv.DictReader((tmp_path / "comparison.csv").open())}
    assert (rows["single"]["threads"], rows["dp2"]["threads"]) == ("2", "2")
    assert "ranked by tokens/s per device; 2 CPU threads per job" in " ".join(result.stdout.split())


def test_bad_thread_count_is_a_config_error():
    cpus = len(os.sched_getaffinity(0))
    for threads in (0, cpus + 1):
        result = run_train(f"hardware.cpu_threads={threads}")
        assert result.returncode == 2
        assert result.stderr.strip() == (f"error: hardware.cpu_threads={threads} must be between 1 and the {cpus} "
                                         f"CPUs this machine lets us use (or null: all of them)")
