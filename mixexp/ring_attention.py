"""Causal ring attention over the context-parallel group (the megatron_cp_algo math).

The sequence is cut into 2*cp chunks and rank r holds chunks r and 2*cp-1-r,
so every rank gets the same share of causal work (Megatron's load-balanced
split; RoPE positions are sliced the same way by megatron-core). Key/value
blocks travel around the ring with point-to-point sends; each rank attends
its query chunks to every block it sees and merges the partial results with
their log-sum-exp. Gradients travel the ring backwards through `_RingPass`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def chunk_ids(rank: int, cp: int) -> tuple[int, int]:
    """The two sequence chunks (of 2*cp) that context-parallel rank `rank` holds."""
    return rank, 2 * cp - 1 - rank


def local_chunk_indices(seq_length: int, rank: int, cp: int) -> torch.Tensor:
    """Token positions of the full sequence held by `rank`, in local order."""
    chunk = seq_length // (2 * cp)
    first, second = chunk_ids(rank, cp)
    return torch.cat([torch.arange(first * chunk, (first + 1) * chunk),
                      torch.arange(second * chunk, (second + 1) * chunk)])


class _RingPass(torch.autograd.Function):
    """Send to the next rank, receive from the previous; backward goes the other way."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _shift(x, group, step=1)

    @staticmethod
    def backward(ctx, grad):
        return _shift(grad.contiguous(), ctx.group, step=-1), None


def _shift(x: torch.Tensor, group, step: int) -> torch.Tensor:
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    dst = dist.get_global_rank(group, (rank + step) % size)
    src = dist.get_global_rank(group, (rank - step) % size)
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), dst, group),
           dist.P2POp(dist.irecv, out, src, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


def _block(q, k, v, scale, causal):
    """Attention of one query chunk to one key chunk: (output, log-sum-exp)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if causal:
        n = scores.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), v), lse


def _merge(out, lse, block_out, block_lse):
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    return out * torch.exp(lse - new_lse) + block_out * torch.exp(block_lse - new_lse), new_lse


def ring_attention(q, k, v, scale: float, group) -> torch.Tensor:
    """q, k, v: [b, h, s_local, d] holding this rank's two chunks; returns [b, h, s_local, d]."""
    cp = dist.get_world_size(group)
    rank = dist.get_rank(group)
    q_chunks = q.chunk(2, dim=2)
    q_ids = chunk_ids(rank, cp)
    outs, lses = [None, None], [None, None]
    kv = torch.stack([k, v])
    for step in range(cp):
        source = (rank - step) % cp
        k_chunks, v_chunks = kv[0].chunk(2, dim=2), kv[1].chunk(2, dim=2)
        for qi, q_id in enumerate(q_ids):
            for k_id, kc, vc in zip(chunk_ids(source, cp), k_chunks, v_chunks):
                if k_id > q_id:
                    continue  # entirely in this query chunk's future
                o, l = _block(q_chunks[qi], kc, vc, scale, causal=(k_id == q_id))
                outs[qi], lses[qi] = _merge(outs[qi], lses[qi], o, l)
        if step < cp - 1:
            kv = _RingPass.apply(kv, group)
    return torch.cat(outs, dim=2)
