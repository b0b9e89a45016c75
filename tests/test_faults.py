"""A failing rank ends the whole job promptly with its error; nothing hangs, nothing is left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_train


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_raising_rank_ends_the_job_with_its_error(tmp_path):
    start = time.time()
    result = run_train("parallel=pp2", "data=synthetic", "train.iters=4", "train.fault=raise", "train.fault_rank=1",
                       "train.fault_step=2", f"hydra.run.dir={tmp_path}", timeout=300)
    ended = time.time()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: run failed: rank 1: RuntimeError: injected fault at step 2"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "rank 1: RuntimeError: injected fault at step 2"
    fault_time = (tmp_path / "errors" / "rank1.txt").stat().st_mtime
    assert start < fault_time and ended - fault_time < 60
    assert processes_mentioning(str(tmp_path)) == []


def test_a_hung_rank_fails_by_collective_timeout(tmp_path):
    result = run_train("parallel=dp2", "data=synthetic", "train.iters=4", "train.fault=hang", "train.fault_rank=0",
                       "train.fault_step=2", "train.collective_timeout_s=10", f"hydra.run.dir={tmp_path}",
                       timeout=300)
    assert result.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("rank 1: ")  # the peer that waited in vain reports it
    assert processes_mentioning(str(tmp_path)) == []


def test_sigterm_stops_every_worker(tmp_path):
    env = dict(os.environ, MIXEXP_CACHE=str(REPO / ".cache"))
    proc = subprocess.Popen([sys.executable, "train.py", "parallel=dp2", "data=synthetic", "train.iters=500",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
            assert time.time() < deadline and proc.poll() is None, "training never started"
            time.sleep(0.5)
        assert len(processes_mentioning(f"mixexp.worker {tmp_path}")) == 3  # torchrun and its 2 workers
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    time.sleep(1)
    assert processes_mentioning(str(tmp_path)) == []
