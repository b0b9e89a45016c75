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

from mixexp.lifetime import die_with_parent_preexec
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


def exits_path(run_dir: Path, node_rank: int) -> Path:
    """Where mixexp.torchrun records how this node's failed ranks ended."""
    return Path(run_dir) / "errors" / f"exits.node{node_rank}.json"


def torchrun_command(cfg, nproc_per_node: int, run_dir: Path, master_port: int) -> list[str]:
    """torchrun through mixexp.torchrun, which records the ranks' exit codes and signals."""
    torchrun_args = torchrun_prefix(cfg, nproc_per_node, master_port)[3:]  # after `python -m torch.distributed.run`
    return [sys.executable, "-m", "mixexp.torchrun", str(exits_path(run_dir, cfg.cluster.node_rank)),
            *torchrun_args, "-m", "mixexp.worker", str(run_dir)]


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


def _child_setup():
    """In the child before exec: die with the launcher, and ignore SIGUSR2. SLURM signals every process of
    a job step, torchrun and the workers too, and SIGUSR2 would kill them unsaved; only the launcher acts
    on it (a stop request for all)."""
    die_with_parent = die_with_parent_preexec()

    def setup() -> None:
        die_with_parent()
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    return setup


def supervise(cmd: list[str], env: dict, cwd: str | None = None, on_line=None, grace_s: float = GRACE_S) -> int:
    """Run `cmd` in its own session until it ends; returns its exit code.

    SIGINT/SIGTERM/SIGUSR2 to us become SIGTERM to the whole process group, and SIGKILL
    after `grace_s` if it is still alive. With `on_line`, its output is read line
    by line and handed over (stdout and stderr merged).
    """
    pipe = subprocess.PIPE if on_line else None
    # Its own session (to signal its group), yet it dies with us: a kill -9 of the launcher leaves nothing.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=_child_setup(),
                            stdout=pipe, stderr=subprocess.STDOUT if on_line else None, text=True, errors="replace",
                            bufsize=1)
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


# What a rank sees when a peer vanished (gloo, NCCL): a consequence, not the cause.
PEER_VANISHED = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Read error",
                 "remote process exited", "NCCL communicator was aborted")


def _rank_errors(run_dir: Path) -> list[tuple[int, str]]:
    """(rank, first line) of each error a rank wrote, oldest first."""
    files = sorted((run_dir / "errors").glob("rank*.txt"), key=lambda p: p.stat().st_mtime)
    return [(int(p.stem[len("rank"):]), p.read_text().splitlines()[0]) for p in files]


def _killed_ranks(run_dir: Path) -> list[tuple[int, str]]:
    """(rank, signal name) of each rank that torchrun saw end by a signal (mixexp.torchrun's records)."""
    import json

    killed = []
    for path in sorted((run_dir / "errors").glob("exits.node*.json")):
        for rank, end in json.loads(path.read_text()).items():
            if end["signal"]:
                killed.append((int(rank), end["signal"]))
    return sorted(killed)


def _killed_message(rank: int, signal_name: str) -> str:
    hint = " (the kernel's out-of-memory killer, or kill -9)" if signal_name == "SIGKILL" else ""
    return f"rank {rank}: killed by {signal_name}{hint}"


def root_cause(run_dir: Path) -> str | None:
    """The error that ended the job: a rank's own error before a rank killed by a signal (which could
    write none) before its peers' complaints that it vanished; SIGTERM is torchrun stopping the rest."""
    errors = _rank_errors(run_dir)
    wrote = {rank for rank, _ in errors}
    killed = [(rank, sig) for rank, sig in _killed_ranks(run_dir) if rank not in wrote]
    own = [line for _, line in errors if not any(marker in line for marker in PEER_VANISHED)]
    by_others = [k for k in killed if k[1] != "SIGTERM"]
    if own:
        return own[0]
    if by_others:
        return _killed_message(*by_others[0])
    if errors:
        return errors[0][1]
    return _killed_message(*killed[0]) if killed else None
