"""Child processes die with their parent, so a `kill -9` of a launcher leaves nothing running.

torchrun runs in its own session (so the launcher can signal its whole group), which also means
nothing takes it down when the launcher is killed outright; the same holds for torchrun's ranks
and preprocessing's tokenizer workers. Each child asks the kernel for a signal when its parent
dies (Linux's parent-death signal); elsewhere a thread watches the parent. Pure Python, no torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _watch_parent(parent_pid: int, sig: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Get `sig` when the process `parent_pid` (our parent, which forked us) dies.

    Safe in a `preexec_fn` (the setting survives exec). If the parent is gone already (we were
    re-parented before asking), the signal comes at once.
    """
    if _prctl is None or _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        _watch_parent(parent_pid, sig)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def die_with_parent_preexec(sig: int = signal.SIGKILL):
    """A `subprocess.Popen(preexec_fn=...)` that makes the child die with the process starting it."""
    parent = os.getpid()
    return lambda: die_with_parent(parent, sig)
