"""Save and load training state with megatron-core's dist_checkpointing, independent of the layout.

A checkpoint is one `dist_checkpointing` directory (torch_dist format) holding
- the model: every chunk's `sharded_state_dict()`, global keys such as
  `decoder.layers.self_attention.linear_qkv.weight` with the layer (and expert)
  axes prepended, so any tp/pp/ep/vpp layout reads the slices it holds;
- the optimizer: Megatron's optimizer `sharded_state_dict` (plain, or the
  distributed one in its reshardable form) keyed by the same model keys, made
  portable by `mixexp.ckpt_compat`;
- the scheduler's state, Adam's step count, the step (which is also the data
  position: batches are a pure function of the step), the layout, the model config;
- per-rank RNG states (python, numpy, torch, Megatron's tracker), restored when
  the layout is the same (they mean nothing to another layout's ranks).

The directory protocol (tmp dir, rename, `latest`) is `mixexp.ckpt_dirs`.
"""

from __future__ import annotations

import os
import random
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import load_sharded_metadata
from omegaconf import OmegaConf

from mixexp import ckpt_compat, ckpt_dirs

FORMAT = 1
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "vocab_size",
                "num_experts", "untie_embeddings")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into this run; the message says why and what to do."""


@contextmanager
def _quiet():
    """torch's checkpoint API warns about its deprecated ShardedTensor on every call Megatron makes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


# ---- state pieces ---------------------------------------------------------------------------


def model_sharded_state_dict(chunks) -> dict:
    """The GPTModel chunks' sharded state dicts (keys are global, not per chunk)."""
    return {f"chunk{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def optimizer_sharded_state_dict(optimizer, model_sd: dict, is_loading: bool) -> dict:
    if is_loading:
        ckpt_compat.allocate_state(optimizer)
    sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=ckpt_compat.OPTIM_METADATA)
    return ckpt_compat.localize(sd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_object(data) -> ShardedObject:
    world = dist.get_world_size()
    return ShardedObject("rng_state", data, (world,), (dist.get_rank(),), replica_id=0)


def layout_record(layout) -> dict:
    return {"tp": layout.tp, "pp": layout.pp, "ep": layout.ep, "etp": layout.etp, "cp": layout.cp,
            "dp": layout.dp, "vpp": layout.vpp, "world": dist.get_world_size()}


# ---- save -------------------------------------------------------------------------------------

_writer_manager = None


def _writer_results_queue_outlives_stop() -> None:
    """megatron-core's checkpoint writer returns its results through a queue served by a helper process
    it spawns on first use. torchrun signals each rank's whole process group, so a stop request would
    kill that helper before the save it asks for. Start the helper ourselves: it ignores SIGTERM/SIGINT
    and exits with this rank (its parent)."""
    global _writer_manager
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if _writer_manager is None:
        _writer_manager = SyncManager(ctx=mp.get_context("spawn"))
        _writer_manager.start(ckpt_dirs.helper_process_init, (os.getpid(),))
        filesystem_async._results_queue = _writer_manager.Queue()


def save(root: Path, step: int, chunks, optimizer, scheduler, cfg, layout) -> Path:
    """Collective: every rank writes its shards into iter_N.tmp/, then rank 0 commits it."""
    ckpt_compat.require_writer_dependencies()
    _writer_results_queue_outlives_stop()
    root = Path(root)
    tmp = root / f"{ckpt_dirs.iter_name(step)}.tmp"
    if dist.get_rank() == 0:
        ckpt_dirs.begin(root, step)
    dist.barrier()
    model_sd = model_sharded_state_dict(chunks)
    state = {
        "model": model_sd,
        "optimizer": optimizer_sharded_state_dict(optimizer, model_sd, is_loading=False),
        "rng": _rng_object(rng_state()),
        # Not sharded: stored once (rank 0's).
        "format": FORMAT,
        "content": "full",
        "iteration": step,
        "adam_step": ckpt_compat.adam_step(optimizer),
        "scheduler": scheduler.state_dict(),
        "layout": layout_record(layout),
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
    }
    with _quiet():
        dist_checkpointing.save(state, str(tmp))
    # megatron-core's synchronous save ends with a barrier (after metadata.json): every rank's shards
    # are written, and the manifest's gather orders them before rank 0 commits.
    _write_manifest(tmp)
    if cfg.ckpt.fault_during_save == step and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # files written, nothing committed: `latest` must not change
    final = root / ckpt_dirs.iter_name(step)
    if dist.get_rank() == 0:
        ckpt_dirs.commit(root, tmp, cfg.ckpt.keep_last)
    dist.barrier()
    return final


def _write_manifest(path: Path) -> None:
    """Each rank hashes a share of the checkpoint's files; rank 0 writes the manifest."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = ckpt_dirs.checkpoint_files(path)
    shares = [None] * world
    dist.all_gather_object(shares, {name: ckpt_dirs.file_entry(path / name) for name in names[rank::world]})
    if rank == 0:
        ckpt_dirs.write_manifest(path, {name: entry for share in shares for name, entry in share.items()})


# ---- load -------------------------------------------------------------------------------------


def verify(path: Path) -> None:
    """Every file's CRC-32 against the manifest, a share per rank; all ranks raise the same error."""
    entries = ckpt_dirs.read_manifest(path)
    rank, world = dist.get_rank(), dist.get_world_size()
    if entries is None:
        if rank == 0:
            print(f"[mixexp] {path} has no {ckpt_dirs.MANIFEST} (saved before manifests): loading it unverified",
                  flush=True)
        return
    shares = [None] * world
    dist.all_gather_object(shares, ckpt_dirs.check_contents(path, sorted(entries)[rank::world]))
    problems = sorted(problem for share in shares for problem in share)
    if problems:
        raise CheckpointError(problems[0])


def _check_model_shape(saved: dict | None, model_cfg, path: Path) -> None:
    if not saved:
        return
    expert_ffn = lambda m: m.get("moe_ffn_hidden_size") or m["ffn_hidden_size"]  # noqa: E731
    diffs = [f"model.{k}={model_cfg[k]} (checkpoint: {saved[k]})" for k in SHAPE_FIELDS
             if k in saved and saved[k] != model_cfg[k]]
    if expert_ffn(saved) != expert_ffn(model_cfg):
        diffs.append(f"expert FFN width {expert_ffn(model_cfg)} (checkpoint: {expert_ffn(saved)})")
    if diffs:
        raise CheckpointError(f"{path} holds another model shape: {', '.join(diffs)}")


def _load_model(chunks, loaded: dict) -> None:
    for i, chunk in enumerate(chunks):
        missing, unexpected = chunk.load_state_dict(loaded[f"chunk{i}"], strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise CheckpointError(f"model keys missing from the checkpoint: {missing}; unexpected: {unexpected}")


def load(path: Path, chunks, optimizer, scheduler, cfg, layout, weights_only: bool) -> int:
    """Load a checkpoint into this rank's model (and optimizer, scheduler, RNG); returns its step.

    weights_only: the model only (fine-tuning or continued pretraining from converted weights);
    the optimizer, schedule and step start fresh (optimizer and scheduler may be None), and the
    returned step is 0.
    """
    path = Path(path)
    if cfg.ckpt.verify:
        verify(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    _check_model_shape(common.get("model_config"), cfg.model, path)
    model_sd = model_sharded_state_dict(chunks)
    request = {"model": model_sd}
    if not weights_only:
        if common.get("content") != "full":
            raise CheckpointError(f"{path} holds model weights only (a converted checkpoint?): "
                                  "start from it with ckpt.finetune=true")
        request["optimizer"] = optimizer_sharded_state_dict(optimizer, model_sd, is_loading=True)
        if common.get("layout") == layout_record(layout):  # RNG states belong to the same ranks only
            request["rng"] = _rng_object(None)
    stored = {key.split("/shard_")[0] for key in load_sharded_metadata(str(path))}
    missing, main_params_dropped = ckpt_compat.fit_keys(request, stored)
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensors this run needs, e.g. {', '.join(missing[:3])}")
    with _quiet():
        loaded = dist_checkpointing.load(request, str(path))
    _load_model(chunks, loaded["model"])
    if weights_only:
        if optimizer is not None:
            optimizer.reload_model_params()  # main (fp32) copies follow the loaded weights
        return 0
    optimizer.load_state_dict(ckpt_compat.with_adam_step(optimizer, loaded["optimizer"], common["adam_step"]))
    ckpt_compat.set_adam_step(optimizer, common["adam_step"])
    if main_params_dropped:  # e.g. a plain fp32 optimizer's checkpoint into the distributed optimizer
        optimizer.reload_model_params()
    scheduler.load_state_dict(common["scheduler"])
    if "rng" in loaded:
        set_rng_state(loaded["rng"])
    return int(common["iteration"])
