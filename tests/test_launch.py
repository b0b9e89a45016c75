"""Launching: torchrun's rendezvous flags from the cluster config and from SLURM's environment."""

import csv
import json
import sys

import pytest

from conftest import compose, run_train
from mixexp import cluster
from mixexp.app import nproc_per_node
from mixexp.errors import ConfigError
from mixexp.launch import torchrun_command
from mixexp.layout import validate


def test_single_node_cpu_runs_as_many_ranks_as_the_layout():
    cfg = compose("parallel=tp2_pp2")
    assert nproc_per_node(cfg, validate(cfg)) == 4


def test_multi_node_flags(tmp_path):
    cfg = compose("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8",
                  "cluster.node_rank=3", "cluster.master_addr=node0", "cluster.master_port=29400",
                  "train.seq_length=32768", "train.global_batch_size=32", "train.micro_batch_size=1")
    layout = validate(cfg)
    cmd = torchrun_command(cfg, nproc_per_node(cfg, layout), tmp_path, 29400)
    assert cmd == [sys.executable, "-m", "mixexp.torchrun", str(tmp_path / "errors" / "exits.node3.json"),
                   "--nnodes=8", "--nproc-per-node=8",
                   "--node-rank=3", "--master-addr=node0", "--master-port=29400", "--max-restarts=0",
                   "--monitor-interval=0.5", "-m", "mixexp.worker", str(tmp_path)]


def test_slurm_environment_sets_node_rank_and_address(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_NODEID", "5")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "8")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "npu-a17,npu-a18")
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the first host is read from the list
    resolved = cluster.resolve(compose("cluster.nnodes=8").cluster)
    assert resolved == {"nnodes": 8, "node_rank": 5, "master_addr": "npu-a17", "master_port": 29500 + 456}


def test_slurm_node_count_must_match(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n1")
    with pytest.raises(ConfigError, match=r"cluster.nnodes=8 but SLURM allocated 4 nodes"):
        cluster.resolve(compose("cluster.nnodes=8").cluster)


def test_multi_node_without_a_port_is_refused():
    with pytest.raises(ConfigError, match="cluster.nnodes=2 needs a fixed cluster.master_port"):
        cluster.resolve(compose("cluster.nnodes=2").cluster)


def test_slurm_launcher_config_composes():
    import mixexp.config  # noqa: F401
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm", "cluster.nnodes=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node) == (4, 1)


def test_a_sweep_goes_on_after_a_failing_job(tmp_path):
    result = run_train("-m", "parallel.pp=3,1", "data=synthetic", "train.iters=2", f"hydra.sweep.dir={tmp_path}",
                       timeout=600)
    assert result.returncode == 2  # the sweep finished, and says a job was invalid
    summaries = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")}
    assert sorted(s["status"] for s in summaries.values()) == ["failed", "ok"]
    failed = next(s for s in summaries.values() if s["status"] == "failed")
    assert failed["error"] == "parallel.pp*parallel.vpp=3 does not divide model.num_layers=4"
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["error"] == failed["error"]
    assert (tmp_path / "comparison.png").exists()


def test_sigusr2_stops_the_group_then_calls_the_previous_handler(tmp_path):
    """submitit's SIGUSR2 (time limit) reaches the workers as SIGTERM before submitit requeues."""
    import os
    import signal
    import threading

    from mixexp.launch import supervise

    marker = tmp_path / "got_term"
    child = ("import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(0)))\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        def on_line(line):
            if line.strip() == "ready":
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()

        with pytest.raises(SystemExit) as exit_info:
            supervise([sys.executable, "-c", child], dict(os.environ), on_line=on_line, grace_s=10)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert marker.read_text() == "x"
    assert calls == [signal.SIGUSR2]
