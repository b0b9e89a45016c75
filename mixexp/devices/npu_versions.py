"""Do the installed pieces of the NPU stack pair? torch with torch_npu, MindSpeed with Megatron.

A torch_npu wheel is built against one torch release and is versioned after it: torch_npu
2.7.1.post11 runs on torch 2.7.1 (x86_64: 2.7.1+cpu) and on nothing else. Ascend's own release
names (the "torch_npu" column of MindSpeed's pairing table, e.g. 26.0.0) are mapped to their torch
in RELEASES. Versions are read from the installed distributions' metadata: nothing is imported, so
this is safe in the launcher, and a stand-in torch_npu module without metadata (the CPU rehearsal)
is not checked.

MindSpeed's branches follow Megatron's: MindSpeed core_r0.16.0 (version 0.16.0) "supports Mcore
0.16.0", and patches functions by dotted path, so another Megatron minor version breaks it in ways
that show late (a missing attribute deep in a patch, or a patch that silently misses). Those versions
are read from files too (nothing under megatron is imported: safe before MindSpeed's adaptor).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.parse
import warnings
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


_VERSION = re.compile(r"^(\d+)\.(\d+)")


def mindspeed_version() -> str | None:
    return installed_version("mindspeed")


def _source_commit(source: str) -> str | None:
    if os.path.isdir(os.path.join(source, ".git")):
        out = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    path = os.path.join(source, "COMMIT")
    return open(path).read().strip() if os.path.isfile(path) else None


def mindspeed_commit() -> str | None:
    """The commit MindSpeed was installed from, as pip recorded its source (PEP 610's direct_url.json):
    a git URL's commit, or a local source's git HEAD or the COMMIT file `make setup-mindspeed` writes."""
    try:
        info = json.loads(metadata.distribution("mindspeed").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        return None
    if "vcs_info" in info:
        return info["vcs_info"].get("commit_id")
    url = info.get("url", "")
    return _source_commit(urllib.parse.unquote(url[len("file://"):])) if url.startswith("file://") else None


def _package_info_version(megatron_dir: str) -> str | None:
    path = os.path.join(megatron_dir, "core", "package_info.py")
    if not os.path.isfile(path):
        return None
    text = open(path).read()
    parts = [re.search(rf"^{name}\s*=\s*(\d+)", text, re.M) for name in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None


def megatron_core_version() -> str | None:
    """megatron.core's version as `import megatron.core` would find it (first on megatron's path)."""
    spec = importlib.util.find_spec("megatron")
    for location in (spec.submodule_search_locations or []) if spec else []:
        version = _package_info_version(location)
        if version:
            return version
    return None


def megatron_lm_version(search_path: list[str] | None = None) -> str | None:
    """The version of the Megatron-LM checkout that provides megatron.training."""
    from mixexp.devices.npu import megatron_lm_checkout

    checkout = megatron_lm_checkout(search_path)
    return _package_info_version(os.path.join(checkout, "megatron")) if checkout else None


def _minor(version: str | None) -> tuple[int, int] | None:
    match = _VERSION.match(version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_pairing(mindspeed: str | None, megatron_core: str | None, megatron_lm: str | None) -> None:
    """ConfigError for a known mismatch; a warning for a version this check cannot read."""
    ms, core, lm = _minor(mindspeed), _minor(megatron_core), _minor(megatron_lm)
    if ms is None or core is None:
        warnings.warn(f"cannot tell whether MindSpeed {mindspeed} pairs with megatron-core {megatron_core}: "
                      "MindSpeed core_rX.Y.0 pairs with Megatron core X.Y (docs/npu.md)")
        return
    if ms != core:
        raise ConfigError(f"MindSpeed {mindspeed} (branch core_r{ms[0]}.{ms[1]}.0) pairs with Megatron core "
                          f"{ms[0]}.{ms[1]}.x, but megatron-core {megatron_core} is installed: install Megatron-LM "
                          f"core_v{ms[0]}.{ms[1]}.x, or MindSpeed core_r{core[0]}.{core[1]}.0 (docs/npu.md)")
    if lm is not None and lm != core:
        raise ConfigError(f"the Megatron-LM checkout on the path is {megatron_lm}, but megatron-core {megatron_core} "
                          f"is installed: megatron.training and megatron.core must be one release (install "
                          f"Megatron-LM core_v{core[0]}.{core[1]}.x)")


def check_installed_pairing() -> None:
    check_pairing(mindspeed_version(), megatron_core_version(), megatron_lm_version())
