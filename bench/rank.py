"""One mixexp rank inside the calling process, built the way `mixexp.worker` builds it.

World size 1 on gloo (an in-process TCP store), the CPU device adaptor, megatron-core's
parallel state, the model from `mixexp.model`, layout-independent init, DDP, optimizer and
scheduler, and `mixexp.loop.Trainer`. Used by the benchmarks to time the model and the loop
without the launcher and torchrun around them.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(*overrides: str):
    """The config `python train.py OVERRIDES` would compose (no Hydra run directory)."""
    from omegaconf import OmegaConf

    from mixexp.megatron_args import compose as compose_train

    cfg = compose_train(list(overrides))
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    resolved.data.cache_dir = str(REPO / ".cache" / "data")  # ${hydra:...} needs a Hydra run
    return resolved


class FixedBatches:
    """The `MicroBatches` interface over pre-built micro-batches (the same every step)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    @property
    def num_microbatches(self) -> int:
        return len(self.batches)

    def step(self, step: int):
        return iter(self.batches)


def synthetic_batches(cfg) -> list[dict]:
    """The first global batch of the synthetic dataset, cut into micro-batches as one rank's loader does."""
    from mixexp.data.loader import MicroBatches, SyntheticDataset
    from mixexp.layout import Layout

    t = cfg.train
    data = SyntheticDataset(t.global_batch_size, t.seq_length, cfg.model.vocab_size, t.seed)
    return list(MicroBatches(data, cfg, Layout(), dp_rank=0, cp_rank=0).step(0))


def init_single_rank(cfg):
    """Device adaptor, gloo world of one, megatron parallel state. Returns the layout."""
    from mixexp import devices
    from mixexp.launch import free_port
    from mixexp.layout import validate

    layout = validate(cfg)
    assert layout.world_size == 1, "the in-process rank supports parallel=single only"
    for pattern in (".*Transformer Engine.*", ".*Apex.*", ".*grouped_gemm.*"):
        warnings.filterwarnings("ignore", message=pattern)
    devices.prepare("cpu", cfg)
    import torch
    import torch.distributed as dist

    torch.manual_seed(cfg.train.seed)
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel

    devices.finish("cpu")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.train.seed)
    return layout


def build_model(cfg, layout):
    """The rank's model chunks with mixexp's layout-independent init."""
    from mixexp.init_weights import init_layout_independent
    from mixexp.model import build_model_chunks

    chunks = build_model_chunks(cfg, layout)
    init_layout_independent(chunks, cfg.train.seed, cfg.model.init_method_std, cfg.model.num_layers)
    return chunks


def build_trainer(cfg, chunks, microbatches):
    """DDP, optimizer, scheduler and the Trainer, as the worker wires them."""
    from megatron.core.utils import get_model_config

    from mixexp.loop import Trainer, build_optimizer, wrap_ddp

    config = get_model_config(chunks[0])
    model = wrap_ddp(chunks, config, cfg)
    optimizer, scheduler = build_optimizer(model, cfg)
    return Trainer(model, optimizer, scheduler, config, cfg, microbatches)
