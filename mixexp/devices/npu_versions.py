"""Is the installed torch the one the installed torch_npu was built for?

A torch_npu wheel is built against one torch release and is versioned after it: torch_npu
2.7.1.post11 runs on torch 2.7.1 (x86_64: 2.7.1+cpu) and on nothing else. Ascend's own release
names (the "torch_npu" column of MindSpeed's pairing table, e.g. 26.0.0) are mapped to their torch
in RELEASES. Versions are read from the installed distributions' metadata: nothing is imported, so
this is safe in the launcher, and a stand-in torch_npu module without metadata (the CPU rehearsal)
is not checked.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Callable

from mixexp.errors import ConfigError

# The stack mixexp's NPU path is built for: MindSpeed core_r0.16.0 with megatron-core 0.16 (docs/npu.md).
TORCH, TORCH_NPU_RELEASE, TORCH_NPU_WHEEL = "2.7.1", "26.0.0", "2.7.1.postN"
# Ascend Extension for PyTorch release -> the torch it pairs with, for a wheel versioned that way.
RELEASES = {"26.0.0": TORCH}


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(x or 0) for x in match.groups()) if match else ()


def torch_for(torch_npu_version: str) -> str | None:
    """The torch a torch_npu version is built for; None when its version says neither."""
    release = _release(torch_npu_version)
    if not release:
        return None
    if release[0] >= 3:  # an Ascend release name, not a torch version
        return RELEASES.get(".".join(map(str, release)))
    return ".".join(map(str, release))


def pairing_error(torch_version: str, torch_npu_version: str) -> str | None:
    """One line naming both versions and what to install, when torch is not torch_npu's torch."""
    wanted = torch_for(torch_npu_version)
    have = ".".join(map(str, _release(torch_version)))
    if wanted is None or wanted == have:
        return None
    return (f"torch_npu {torch_npu_version} is built for torch {wanted}, but torch {torch_version} is installed: "
            f"install torch=={wanted} (x86_64: {wanted}+cpu), or the torch_npu built for torch {have}. mixexp's NPU "
            f"stack is torch {TORCH} with torch_npu {TORCH_NPU_RELEASE} (wheel {TORCH_NPU_WHEEL}): docs/npu.md")


def check_torch_pairing(versions: Callable[[str], str | None] | None = None) -> None:
    """ConfigError when the installed torch and torch_npu do not pair; a warning when it cannot tell."""
    versions = versions or installed_version
    torch_npu, torch = versions("torch_npu"), versions("torch")
    if torch_npu is None or torch is None:
        return
    if torch_for(torch_npu) is None:
        print(f"warning: cannot tell which torch torch_npu {torch_npu} is built for (torch {torch} is installed); "
              f"mixexp's NPU stack is torch {TORCH} with torch_npu {TORCH_NPU_RELEASE}", file=sys.stderr)
        return
    error = pairing_error(torch, torch_npu)
    if error:
        raise ConfigError(error)
