"""Grouped experts for devices without Transformer Engine or the `grouped_gemm` package.

megatron-core's local spec runs experts as SequentialMLP: a Python loop over
expert MLP modules, each its own linear layers and autograd nodes. Here the
experts' weights are two stacked tensors and the dispatcher's tokens (already
sorted by expert) go through two `torch.nn.functional.grouped_mm` calls (a loop
of matmuls on a torch without it), with the SwiGLU and the routing probabilities applied once over all tokens.

To everything outside the forward pass it looks like SequentialMLP:
`sharded_state_dict` yields the same global keys, shapes, offsets and replica
ids per expert (`...mlp.experts.experts.linear_fc1.weight` with the expert
axis), so distributed checkpoints, layout-independent init and the EP/ETP
shards are unchanged; `fc1_weight[e]` is expert e's `linear_fc1.weight`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_object_for_checkpoint


def _linear(x: torch.Tensor, weight: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Rows of x grouped by expert (group e: sizes[e] rows) times each expert's weight [out, in]."""
    if not hasattr(F, "grouped_mm"):
        # A torch without grouped_mm (the Ascend stack's 2.7.1): one matmul per expert, the same product.
        return torch.cat([rows @ w.transpose(0, 1) for rows, w in zip(torch.split(x, sizes.tolist()), weight)])
    offsets = torch.cumsum(sizes, 0, dtype=torch.int32)
    return F.grouped_mm(x, weight.transpose(-2, -1), offs=offsets)


class GroupedExperts(MegatronModule):
    """Drop-in for megatron-core's SequentialMLP (MoE `experts` submodule of the layer spec)."""

    def __init__(self, num_local_experts: int, config, submodules=None, pg_collection=None):
        super().__init__(config=config)
        assert not config.add_bias_linear, "GroupedExperts has no biases"
        assert config.activation_func_clamp_value is None and config.glu_linear_offset == 0, "plain (Sw)GLU only"
        self.num_local_experts = num_local_experts
        self.ep_group, self.tp_group, self.dp_group = pg_collection.ep, pg_collection.expt_tp, pg_collection.expt_dp
        ffn = config.moe_ffn_hidden_size // self.tp_group.size()
        fc1_rows = 2 * ffn if config.gated_linear_unit else ffn
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.fc1_weight = torch.nn.Parameter(torch.empty(num_local_experts, fc1_rows, config.hidden_size,
                                                         dtype=config.params_dtype, device=device))
        self.fc2_weight = torch.nn.Parameter(torch.empty(num_local_experts, config.hidden_size, ffn,
                                                         dtype=config.params_dtype, device=device))
        for param, tp_dim in ((self.fc1_weight, 1), (self.fc2_weight, 2)):
            set_tensor_model_parallel_attributes(param, is_parallel=True, dim=tp_dim, stride=1)
            # Expert-parallel parameters are reduced over the expert data-parallel group only.
            param.allreduce = config.expert_model_parallel_size == 1
        if config.perform_initialization:  # as Megatron's expert linears: the expert RNG on the device
            rng = (contextlib.nullcontext() if config.use_cpu_initialization
                   else get_cuda_rng_tracker().fork(get_expert_parallel_rng_tracker_name()))
            with rng:
                config.init_method(self.fc1_weight.data)
                config.output_layer_init_method(self.fc2_weight.data)
        # SequentialMLP checkpoints carry a (None) `_extra_state` per linear layer; accept them on load.
        self.register_load_state_dict_post_hook(_ignore_extra_state)

    def _activation(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.gated_linear_unit:
            gate, up = torch.chunk(h, 2, dim=-1)
            return self.config.activation_func(gate) * up
        return self.config.activation_func(h)

    def forward(self, tokens: torch.Tensor, tokens_per_expert: torch.Tensor, probs: torch.Tensor):
        """tokens [n, hidden] sorted by local expert; returns ([n, hidden], None) like SequentialMLP."""
        dtype = tokens.dtype
        if self.config.moe_apply_probs_on_input:
            tokens = (probs.unsqueeze(-1) * tokens).to(dtype)
            probs = torch.ones_like(probs)
        sizes = torch.as_tensor(tokens_per_expert, device=tokens.device)
        hidden = _linear(tokens, self.fc1_weight, sizes)
        hidden = (self._activation(hidden) * probs.unsqueeze(-1)).to(dtype)
        return _linear(hidden, self.fc2_weight, sizes), None

    def backward_dw(self):
        pass

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """SequentialMLP's sharded tensors, built from views of the stacked weights (also optimizer states)."""
        singleton = (metadata or {}).get("singleton_local_shards", False)
        ep_rank, tp_rank, tp_size = self.ep_group.rank(), self.tp_group.rank(), self.tp_group.size()
        num_global = self.ep_group.size() * self.num_local_experts
        replica_id = (0, 0, self.dp_group.rank())
        axis = len(sharded_offsets) + (0 if singleton else 1)  # first axis of the expert's own weight
        glu = self.config.gated_linear_unit

        def expert_offsets(g: int) -> tuple:
            return sharded_offsets if singleton else (*sharded_offsets, (len(sharded_offsets), g, num_global))

        def expert_key(key: str, g: int) -> str:
            return key.replace(f"{prefix}experts.", f"{prefix}experts.{g}.") if singleton else key

        def build(name: str, key: str, data: torch.Tensor, replica, flattened_range) -> list[ShardedTensor]:
            assert flattened_range is None, "flattened (distributed-optimizer) shards of GroupedExperts"
            pieces = []
            for e in range(self.num_local_experts):
                g = ep_rank * self.num_local_experts + e
                k, offsets = expert_key(key, g), expert_offsets(g)
                if name == "linear_fc2":
                    parts = [(k, data[e], (axis + 1, tp_rank, tp_size))]
                elif glu:  # [gate; up] rows: each half is sharded over the expert tensor-parallel ranks
                    w, v = torch.chunk(data[e], 2, dim=0)
                    parts = ([(k + "_w", w, (axis, tp_rank, tp_size)), (k + "_v", v, (axis, tp_rank, tp_size))]
                             if singleton else
                             [(k, w, (axis, tp_rank, 2 * tp_size)), (k, v, (axis, tp_size + tp_rank, 2 * tp_size))])
                else:
                    parts = [(k, data[e], (axis, tp_rank, tp_size))]
                pieces += [ShardedTensor.from_rank_offsets(pk, t, *offsets, tp_offset, replica_id=replica,
                                                           prepend_axis_num=len(offsets))
                           for pk, t, tp_offset in parts]
            return pieces

        def merge(pieces: list[torch.Tensor]) -> torch.Tensor:
            per_expert = len(pieces) // self.num_local_experts
            return torch.stack([torch.cat(pieces[i:i + per_expert]) for i in range(0, len(pieces), per_expert)])

        out = {}
        for name, param in (("linear_fc1", self.fc1_weight), ("linear_fc2", self.fc2_weight)):
            out[f"{prefix}{name.replace('linear_', '')}_weight"] = ShardedTensorFactory(
                f"{prefix}experts.{name}.weight", param,
                lambda key, data, replica, flat, name=name: build(name, key, data, replica, flat), merge, replica_id)
            for e in range(self.num_local_experts):
                g = ep_rank * self.num_local_experts + e
                key = expert_key(f"{prefix}experts.{name}._extra_state", g)
                out[f"{prefix}local_experts.{e}.{name}._extra_state"] = make_sharded_object_for_checkpoint(
                    None, key, expert_offsets(g), (0, tp_rank, self.dp_group.rank()))
        return out


def _ignore_extra_state(module, incompatible_keys) -> None:
    for key in list(incompatible_keys.unexpected_keys):
        if key.endswith("_extra_state"):
            incompatible_keys.unexpected_keys.remove(key)
