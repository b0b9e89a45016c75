"""The checkpoint directory protocol: atomic commits, the `latest` pointer, pruning, what to load.

A checkpoint root holds

    iter_0000004/        a complete checkpoint (megatron-core dist_checkpointing files)
    iter_0000006.tmp/    a save in progress, or one that died: never loaded, removed by the next save
    latest               the name of the newest complete checkpoint ("iter_0000004")

A save writes into `iter_N.tmp/`, renames it to `iter_N/` once every rank has
written its shards, then replaces `latest` (write a temporary file, fsync,
rename): a run killed at any moment leaves `latest` naming a complete
checkpoint. Pure Python, no torch: the launcher validates `ckpt.load` with it.

Before the rename, `manifest.json` records every file's size and CRC-32 (each rank hashes a
share of the files). A load checks the sizes before launching and the CRCs before training
(`ckpt.verify=false` skips both), so a truncated or overwritten file is named, not loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from pathlib import Path

from mixexp.errors import ConfigError

LATEST = "latest"
METADATA = "metadata.json"  # written by dist_checkpointing into every checkpoint
CONTENT = "mixexp.json"  # what a converted checkpoint holds, readable without torch
MANIFEST = "manifest.json"  # {file: {"size": bytes, "crc32": hex}} of every other file
_ITER = re.compile(r"^iter_(\d{7,})$")
_BLOCK = 8 << 20


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def root_dir(ckpt_cfg, run_dir: Path) -> Path:
    return Path(ckpt_cfg.dir) if ckpt_cfg.dir else Path(run_dir) / "checkpoints"


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / METADATA).is_file()


def checkpoint_files(path: Path) -> list[str]:
    """Every file of a checkpoint but its manifest, relative and sorted (the same list on every rank)."""
    path = Path(path)
    return sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != MANIFEST)


def file_entry(path: Path) -> dict:
    """A file's size and CRC-32: cheap enough to hash every byte (about 1-3 GB/s a core)."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            crc = zlib.crc32(block, crc)
    return {"size": os.path.getsize(path), "crc32": f"{crc:08x}"}


def write_manifest(path: Path, entries: dict) -> None:
    target = Path(path) / MANIFEST
    with open(target, "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: Path) -> dict | None:
    """The manifest's entries; None for a checkpoint saved without one (before manifests)."""
    target = Path(path) / MANIFEST
    if not target.is_file():
        return None
    try:
        return json.loads(target.read_text())
    except ValueError:
        raise ConfigError(f"{target} is not valid JSON: the checkpoint is damaged; load another one, "
                          f"or ckpt.verify=false to load it unchecked") from None


def _damaged(path: Path, problem: str) -> str:
    return f"checkpoint {path} is damaged: {problem}; load another one, or ckpt.verify=false to load it unchecked"


def check_sizes(path: Path) -> None:
    """Every file the manifest lists exists with its size (cheap: run by the launcher)."""
    entries = read_manifest(path)
    for name, entry in (entries or {}).items():
        file = Path(path) / name
        if not file.is_file():
            raise ConfigError(_damaged(path, f"{name} is missing"))
        if file.stat().st_size != entry["size"]:
            raise ConfigError(_damaged(path, f"{name} has {file.stat().st_size} bytes, the manifest says {entry['size']}"))


def check_contents(path: Path, names: list[str]) -> list[str]:
    """Problems of the named files (size or CRC-32 differ from the manifest's): one line each."""
    entries = read_manifest(path) or {}
    problems = []
    for name in names:
        file = Path(path) / name
        if not file.is_file():
            problems.append(_damaged(path, f"{name} is missing"))
            continue
        got, want = file_entry(file), entries[name]
        if got["size"] != want["size"]:
            problems.append(_damaged(path, f"{name} has {got['size']} bytes, the manifest says {want['size']}"))
        elif got["crc32"] != want["crc32"]:
            problems.append(_damaged(path, f"{name} has CRC-32 {got['crc32']}, the manifest says {want['crc32']}"))
    return problems


def weights_only(path: Path) -> bool:
    """A checkpoint of model weights only (mixexp.convert writes CONTENT beside the shards)."""
    marker = Path(path) / CONTENT
    return marker.is_file() and json.loads(marker.read_text()).get("content") == "weights"


def latest(root: Path) -> Path | None:
    """The checkpoint `latest` names, or None when there is none (yet)."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not is_checkpoint(path):
        raise ConfigError(f"{pointer} names {path.name}, which is not a complete checkpoint")
    return path


def resolve(ckpt_cfg, run_dir: Path) -> tuple[Path | None, bool]:
    """(checkpoint to load or None, weights only?).

    The run's own `latest` wins over `ckpt.load`: a relaunched (preempted) run resumes
    where it stopped, also when it started by fine-tuning another checkpoint.
    """
    own = latest(root_dir(ckpt_cfg, run_dir))
    if own is not None:
        return own, False
    load = ckpt_cfg.load
    if load in (None, "auto"):
        if ckpt_cfg.finetune:
            raise ConfigError("ckpt.finetune=true needs ckpt.load=DIR (the checkpoint whose weights to start from)")
        return None, False
    path = Path(load)
    if is_checkpoint(path):
        if weights_only(path) and not ckpt_cfg.finetune:
            raise ConfigError(f"ckpt.load={load} holds model weights only (converted): "
                              "start from it with ckpt.finetune=true")
        return path, ckpt_cfg.finetune
    if (path / LATEST).is_file():
        return latest(path), ckpt_cfg.finetune
    raise ConfigError(f"ckpt.load={load} is neither a checkpoint (no {METADATA}) nor a directory with a '{LATEST}' file")


def begin(root: Path, step: int) -> Path:
    """A fresh, empty `iter_N.tmp/` (a leftover of an interrupted save is removed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{iter_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: Path, tmp: Path, keep_last: int) -> Path:
    """Make `tmp` the checkpoint `latest` names; then keep only the newest `keep_last` ones."""
    root = Path(root)
    final = root / tmp.name[: -len(".tmp")]
    if final.exists():  # the same step saved again (e.g. a resumed run that saved at once)
        stale = root / f"{final.name}.old"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
    tmp.rename(final)
    pointer_tmp = root / f".{LATEST}.tmp{os.getpid()}"
    with open(pointer_tmp, "w") as f:
        f.write(final.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> None:
    """Remove complete checkpoints beyond the newest `keep_last`, and leftovers of earlier saves."""
    root = Path(root)
    current = latest(root)
    for leftover in list(root.glob("iter_*.tmp")) + list(root.glob("iter_*.old")):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep_last <= 0:
        return
    done = sorted((p for p in root.iterdir() if _ITER.match(p.name) and p.is_dir()), key=lambda p: p.name)
    for old in done[:-keep_last]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def helper_process_init(parent_pid: int) -> None:
    """Initializer of the checkpoint writer's helper process (see mixexp.checkpoint): it outlives a
    stop request (SIGTERM/SIGINT), which must end with a save that needs it, and not its rank."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
