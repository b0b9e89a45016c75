"""One run per run directory (per node): a second run there is refused at once, naming the holder.

Two runs in one directory overwrite each other's worker_config.yaml, metrics.jsonl and
checkpoints. The lock is an flock on `RUN_DIR/.mixexp.lock` (`.mixexp.nodeN.lock` on a
multi-node job, where every node runs in the same directory), held by the launcher until it
exits: the kernel releases it when the holder dies, even by kill -9, so a lock left by a dead
run is simply taken over. The file names its holder for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from mixexp.errors import ConfigError

_held: dict[str, int] = {}  # lock file -> open descriptor, kept until this process exits


class RunDirBusy(ConfigError):
    """Another live run holds the run directory."""


def _node_rank(cluster) -> int:
    """This node's rank, as mixexp.cluster.resolve finds it (without asking SLURM for host names)."""
    if cluster.nnodes > 1 and "SLURM_JOB_ID" in os.environ and "SLURM_NODEID" in os.environ:
        return int(os.environ["SLURM_NODEID"])
    return cluster.node_rank


def lock_path(run_dir: Path, cluster) -> Path:
    name = ".mixexp.lock" if cluster.nnodes == 1 else f".mixexp.node{_node_rank(cluster)}.lock"
    return Path(run_dir) / name


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {started})"


def lock_run_dir(run_dir: Path, cluster) -> None:
    """Hold the run directory's lock for the rest of this process, or raise RunDirBusy."""
    path = lock_path(run_dir, cluster)
    key = str(path.resolve())
    if key in _held:  # taken already (the Hydra callback, before the job)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        raise RunDirBusy(f"run directory {run_dir} is in use by {_describe(holder)}: wait for that run to end, "
                         f"stop it, or choose another hydra.run.dir") from None
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    _held[key] = fd
