"""Start one worker per rank through torch.distributed.run (torchrun) and wait for them.

torchrun runs as a child process in its own session, so the launcher never
imports torch (start-up stays fast) and can stop the whole tree: SIGINT or
SIGTERM to the launcher is forwarded to torchrun, which stops every worker;
whatever is still alive after a grace period is killed with its process group.
torchrun's monitor ends the job as soon as one rank exits with an error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from mixexp.worker import WORKER_CONFIG

GRACE_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(cfg, nproc_per_node: int, run_dir: Path, master_port: int) -> list[str]:
    c = cfg.cluster
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={c.nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        f"--node-rank={c.node_rank}",
        f"--master-addr={c.master_addr}",
        f"--master-port={master_port}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m", "mixexp.worker", str(run_dir),
    ]


def worker_env(cfg, nproc_per_node: int) -> dict:
    env = dict(os.environ)
    if cfg.hardware.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    env.setdefault("HCCL_CONNECT_TIMEOUT", str(cfg.train.collective_timeout_s))
    env.setdefault("HCCL_EXEC_TIMEOUT", str(cfg.train.collective_timeout_s))
    env.setdefault("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True")
    # The workers import mixexp from this checkout, wherever the job's cwd is.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def launch(cfg, run_dir: Path, nproc_per_node: int) -> int:
    """Run the workers of this node; returns torchrun's exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / WORKER_CONFIG, resolve=True)
    proc = subprocess.Popen(torchrun_command(cfg, nproc_per_node, run_dir, cfg.cluster.master_port or free_port()),
                            env=worker_env(cfg, nproc_per_node), start_new_session=True)
    stop = {}  # the signal that asked us to stop, and when

    def request_stop(signum, frame):
        # Only signal here: waiting inside a handler would deadlock on Popen's wait lock.
        stop.setdefault("signal", signum)
        stop.setdefault("at", time.monotonic())
        _signal_group(proc, signal.SIGTERM)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop and time.monotonic() - stop["at"] > GRACE_S:
                    _signal_group(proc, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signal_group(proc, signal.SIGKILL)  # nothing of the job outlives the launcher
    if stop:
        raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else SystemExit(128 + stop["signal"])
    return code


def first_error(run_dir: Path) -> str | None:
    """The root cause: the first error a rank wrote (later ones are usually its peers hanging up)."""
    files = sorted((run_dir / "errors").glob("rank*.txt"), key=lambda p: p.stat().st_mtime)
    return files[0].read_text().splitlines()[0] if files else None
