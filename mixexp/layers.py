"""Modules we plug into megatron-core's layer spec where its local ones fall short on CPU.

- `RMSNorm`: torch's fused rms_norm, with its weight marked for sequence
  parallelism so Megatron all-reduces its gradient over the TP group (the
  wrapped torch norm of the local spec refuses sequence parallelism).
- `SDPACoreAttention`: causal attention through torch's fused
  scaled_dot_product_attention (the local spec materializes the score matrix),
  sharing KV heads across their query group inside SDPA (no repeated K/V),
  and ring attention over the context-parallel group when cp > 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule

from mixexp.ring_attention import ring_attention


class RMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Tells finalize_model_grads to all-reduce this gradient across TP ranks.
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SDPACoreAttention(MegatronModule):
    """Core attention: [s, b, heads, dim] query/key/value in, [s, b, heads*dim] out."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type,
                 attention_dropout=None, softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise NotImplementedError("packed sequences need Transformer Engine attention")
        seq, batch, heads, head_dim = query.shape
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        grouped = k.shape[1] != heads  # grouped-query attention: each KV head serves a group of query heads
        if parallel_state.get_context_parallel_world_size() > 1:
            if grouped:
                k, v = (t.repeat_interleave(heads // k.shape[1], dim=1) for t in (k, v))
            out = ring_attention(q, k, v, self.softmax_scale, parallel_state.get_context_parallel_group())
        else:  # SDPA shares the KV heads itself (enable_gqa): no repeated copies of K and V
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.softmax_scale,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=grouped)
        return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)
