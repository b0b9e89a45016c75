"""Start one worker per rank through torch.distributed.run (torchrun) and wait for them.

torchrun runs as a child process in its own session, so the launcher never
imports torch (start-up stays fast) and can stop the whole tree: SIGINT or
SIGTERM to the launcher is forwarded to torchrun, which stops every worker;
whatever is still alive after a grace period is killed with its process group.
Workers that were asked to stop finish their step and save a checkpoint first
(mixexp.worker.StopFlag); the grace period is cfg.ckpt.preempt_grace_s.
torchrun's monitor ends the job as soon as one rank exits with an error.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from omegaconf import OmegaConf

from mixexp.worker import WORKER_CONFIG

GRACE_S = 20
TORCHRUN_MARGIN_S = 15  # torchrun's own teardown after its workers are gone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_prefix(cfg, nproc_per_node: int, master_port: int) -> list[str]:
    """`python -m torch.distributed.run ...` up to (not including) the program to run."""
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
    ]


def torchrun_command(cfg, nproc_per_node: int, run_dir: Path, master_port: int) -> list[str]:
    return torchrun_prefix(cfg, nproc_per_node, master_port) + ["-m", "mixexp.worker", str(run_dir)]


def cpu_threads_per_rank(cfg, nproc_per_node: int) -> int:
    """hardware.cpu_threads (default: the CPUs we may run on) split evenly over this node's ranks.

    The job's total, not a per-process count, is what is fixed: a 1-rank and a 2-rank job of a
    comparison then share the same CPU (2 threads, or 1 + 1). Fewer threads than ranks: 1 each.
    """
    total = cfg.hardware.cpu_threads or len(os.sched_getaffinity(0))
    return max(1, total // nproc_per_node)


def worker_env(cfg, nproc_per_node: int) -> dict:
    env = dict(os.environ)
    if cfg.hardware.device == "cpu":  # read by torch (OpenMP, MKL) when it starts in each rank
        threads = str(cpu_threads_per_rank(cfg, nproc_per_node))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
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


def supervise(cmd: list[str], env: dict, cwd: str | None = None, on_line=None, grace_s: float = GRACE_S) -> int:
    """Run `cmd` in its own session until it ends; returns its exit code.

    SIGINT/SIGTERM/SIGUSR2 to us become SIGTERM to the whole process group, and SIGKILL
    after `grace_s` if it is still alive. With `on_line`, its output is read line
    by line and handed over (stdout and stderr merged).
    """
    pipe = subprocess.PIPE if on_line else None
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, stdout=pipe,
                            stderr=subprocess.STDOUT if on_line else None, text=True, errors="replace", bufsize=1)
    stop = {}

    def request_stop(signum, frame):
        # Only signal here: waiting inside a handler would deadlock on Popen's wait lock.
        if stop:
            return
        stop["signal"] = signum
        _signal_group(proc, signal.SIGTERM)
        killer = threading.Timer(grace_s, _signal_group, (proc, signal.SIGKILL))
        killer.daemon = True
        killer.start()

    # SIGUSR2 is what submitit (hydra/launcher=slurm) gets before a SLURM time limit.
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    try:
        if on_line:
            for line in proc.stdout:
                on_line(line)
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signal_group(proc, signal.SIGKILL)  # nothing of the job outlives the launcher
    if stop.get("signal") == signal.SIGUSR2 and callable(previous[signal.SIGUSR2]):
        previous[signal.SIGUSR2](signal.SIGUSR2, None)  # the workers have saved: now submitit may requeue
    if stop:
        raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else SystemExit(128 + stop["signal"])
    return code


def launch(cfg, run_dir: Path, nproc_per_node: int) -> int:
    """Run the workers of this node; returns torchrun's exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir / "errors", ignore_errors=True)  # a relaunch (resume) reports its own errors only
    OmegaConf.save(cfg, run_dir / WORKER_CONFIG, resolve=True)
    port = cfg.cluster.master_port or free_port()
    env = worker_env(cfg, nproc_per_node)
    # A stop request lets the workers finish their step and save (cfg.ckpt.save_on_preempt): torchrun
    # waits that long for them before killing, and we wait for torchrun a little longer.
    grace = cfg.ckpt.preempt_grace_s
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(grace)
    return supervise(torchrun_command(cfg, nproc_per_node, run_dir, port), env, grace_s=grace + TORCHRUN_MARGIN_S)


def first_error(run_dir: Path) -> str | None:
    """The root cause: the first error a rank wrote (later ones are usually its peers hanging up)."""
    files = sorted((run_dir / "errors").glob("rank*.txt"), key=lambda p: p.stat().st_mtime)
    return files[0].read_text().splitlines()[0] if files else None
