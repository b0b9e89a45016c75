"""Layout-independent initialization: every layout starts from the same full model.

megatron-core describes each local parameter shard by a global key, global
shape and offset (its `sharded_state_dict`, the same description
dist_checkpointing uses). We draw each full tensor from a generator seeded by
(seed, key), then copy this rank's slice in. The draw follows Megatron's
scheme: normal(0, std), output projections scaled by 1/sqrt(2*layers), norms at one.
"""

from __future__ import annotations

import math
import zlib

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

SCALED_OUTPUTS = ("linear_proj.weight", "linear_fc2.weight")


def iter_sharded_tensors(tree):
    """ShardedTensors of a (nested) sharded state dict; factories are built into their views."""
    if isinstance(tree, dict):
        items = tree.values()
    elif isinstance(tree, (list, tuple)):
        items = tree
    else:
        items = [tree]
    for item in items:
        if isinstance(item, ShardedTensor):
            yield item
        elif isinstance(item, ShardedTensorFactory):
            yield from iter_sharded_tensors(item.build())
        elif isinstance(item, (dict, list, tuple)):
            yield from iter_sharded_tensors(item)


def full_tensor(key: str, shape, seed: int, std: float, num_layers: int) -> torch.Tensor:
    if key.endswith(("norm.weight", "layer_norm_weight")):  # the latter: TE's fused norm+linear
        return torch.ones(shape)
    if key.endswith(".bias"):
        return torch.zeros(shape)
    if key.endswith(SCALED_OUTPUTS):
        std = std / math.sqrt(2.0 * num_layers)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    return torch.randn(shape, generator=generator) * std


def local_slice(sh: ShardedTensor, full: torch.Tensor) -> torch.Tensor:
    """This shard's part of the full tensor, shaped like the local data."""
    extents = [1] * sh.prepend_axis_num + list(sh.local_shape)
    index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset, extents))
    return full[index].reshape(sh.local_shape)


def _fill(tree, fill):
    """The tree with every ShardedTensor replaced by its data after `fill(sharded_tensor)`."""
    if isinstance(tree, ShardedTensor):
        fill(tree)
        return tree.data
    if isinstance(tree, ShardedTensorFactory):
        merged = tree.merge_fn(_fill(tree.build(), fill))
        # A factory's built tensors may be copies (GroupedMLP's transposed expert weights are made
        # .contiguous()): write the merged full local tensor back into the parameter itself.
        tree.data.copy_(merged.reshape(tree.data.shape).to(tree.data.dtype))
        return tree.data
    if isinstance(tree, dict):
        return {k: _fill(v, fill) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fill(v, fill) for v in tree)
    return tree


@torch.no_grad()
def init_layout_independent(chunks, seed: int, std: float, num_layers: int) -> None:
    cache: dict[str, torch.Tensor] = {}

    def fill(sh: ShardedTensor) -> None:
        if sh.key not in cache:
            cache[sh.key] = full_tensor(sh.key, sh.global_shape, seed, std, num_layers)
        sh.data.copy_(local_slice(sh, cache[sh.key]).to(sh.data.dtype))

    for chunk in chunks:
        _fill(chunk.sharded_state_dict(), fill)
