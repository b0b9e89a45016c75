"""CPU emulations of torch_npu's flash attention and MindSpeed's ring-attention update.

``npu_fusion_attention`` / ``npu_fusion_attention_grad`` follow torch_npu's API reference
("Transformer Attention Score" fusion, 7 outputs, sparse_mode table) and op-plugin's meta
registrations; ``npu_ring_attention_update`` follows MindSpeed's docs/zh/ops/npu_ring_attention_update.md.
Emulated: layouts BSH, SBH, BSND, BNSD; sparse_mode 0-4; atten_mask True = masked out; GQA (fewer
key/value heads than query heads, query head h reads key/value head h // (N / N_kv)); keep_prob 1.
Not emulated (one-line NotImplementedError): TND / varlen (actual_seq_qlen), pse, padding_mask,
prefix and sparse_mode 5-8, dropout (keep_prob < 1). Re-exported by ``mixexp.devices.npu_ops``.
"""

from __future__ import annotations

from typing import Optional

import torch

from mixexp.devices.npu_ops import compute_dtype, not_emulated

_STATS = 8  # softmax_max / softmax_sum repeat each row's value over a last dimension of 8


def _check_modes(op, input_layout, pse, padding_mask, keep_prob, prefix, actual_seq_qlen, actual_seq_kvlen,
                 sparse_mode):
    if input_layout not in ("BSH", "SBH", "BSND", "BNSD"):
        raise not_emulated(op, f"input_layout={input_layout!r}")
    if keep_prob != 1:
        raise not_emulated(op, f"keep_prob={keep_prob} (attention dropout)")
    for name, value in (("pse", pse), ("padding_mask", padding_mask), ("prefix", prefix),
                        ("actual_seq_qlen", actual_seq_qlen), ("actual_seq_kvlen", actual_seq_kvlen)):
        if value is not None:
            raise not_emulated(op, f"{name} (given)")
    if sparse_mode not in (0, 1, 2, 3, 4):
        raise not_emulated(op, f"sparse_mode={sparse_mode}")


def _to_bnsd(t: torch.Tensor, layout: str, head_dim: int) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        b, s, h = t.shape
        return t.reshape(b, s, h // head_dim, head_dim).transpose(1, 2)
    s, b, h = t.shape  # SBH
    return t.reshape(s, b, h // head_dim, head_dim).permute(1, 2, 0, 3)


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    b, n, s, d = t.shape
    if layout == "BNSD":
        return t.contiguous()
    if layout == "BSND":
        return t.transpose(1, 2).contiguous()
    if layout == "BSH":
        return t.transpose(1, 2).reshape(b, s, n * d)
    return t.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def _head_dims(op, query, key, value, head_num, layout):
    """(query/key head dim, value head dim) for the layout."""
    if layout in ("BSH", "SBH"):
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3 or query.shape[-1] % head_num:
            raise ValueError(f"{op}: {layout} needs 3-D query/key/value with query's hidden "
                             f"({query.shape[-1]}) a multiple of head_num={head_num}")
        d = query.shape[-1] // head_num
        if key.shape[-1] % d:
            raise ValueError(f"{op}: key's hidden ({key.shape[-1]}) is not a multiple of the head dim {d}")
        return d, value.shape[-1] // (key.shape[-1] // d)
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(f"{op}: {layout} needs 4-D query/key/value")
    return query.shape[-1], value.shape[-1]


def _bnsd(op, query, key, value, head_num, layout):
    d, dv = _head_dims(op, query, key, value, head_num, layout)
    q, k, v = _to_bnsd(query, layout, d), _to_bnsd(key, layout, d), _to_bnsd(value, layout, dv)
    n, n_kv = q.shape[1], k.shape[1]
    if n != head_num or n_kv == 0 or n % n_kv or v.shape[1] != n_kv:
        raise ValueError(f"{op}: head_num={head_num} with {n} query, {n_kv} key and {v.shape[1]} value heads "
                         f"(query heads must equal head_num and be a multiple of the key/value heads)")
    return q, k, v, dv


def _masked(op, sparse_mode, atten_mask, pre_tockens, next_tockens, q, k):
    """Boolean tensor broadcastable to [B, N, Sq, Skv], True where a score is masked out; None if none is.

    0 defaultMask: no mask without atten_mask (pre/next_tockens ignored); with one, atten_mask and
    the band ``i - pre_tockens <= j <= i + next_tockens`` from the top-left corner. 1 allMask:
    atten_mask as given. 2 leftUpCausal: ``j > i``. 3 rightDownCausal: ``j > i + Skv - Sq``.
    4 band from the bottom-right corner. Modes 2-4 take the compressed 2048x2048 mask (required, as
    documented), whose contents the geometry already gives.
    """
    b, n, sq, skv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    i = torch.arange(sq, device=q.device).unsqueeze(1)
    j = torch.arange(skv, device=q.device).unsqueeze(0)
    if sparse_mode in (0, 1):
        if atten_mask is None:
            return None
        m = atten_mask.bool()
        fits = (m.dim() == 2 and tuple(m.shape) == (sq, skv)) or (
            m.dim() == 4 and tuple(m.shape[2:]) == (sq, skv) and m.shape[0] in (1, b) and m.shape[1] in (1, n))
        if not fits:
            raise ValueError(f"{op}: atten_mask of shape {tuple(m.shape)} does not fit [B, N, Sq, Skv] = "
                             f"{[b, n, sq, skv]} (SS, 11SS, B1SS or BNSS)")
        return m | (j < i - pre_tockens) | (j > i + next_tockens) if sparse_mode == 0 else m
    if atten_mask is None:
        raise ValueError(f"{op}: sparse_mode={sparse_mode} needs atten_mask (the compressed 2048x2048 "
                         f"upper-triangular mask), got None")
    diagonal = i + (skv - sq if sparse_mode in (3, 4) else 0)
    if sparse_mode in (2, 3):
        return j > diagonal
    return (j < diagonal - pre_tockens) | (j > diagonal + next_tockens)  # 4: band


def _scores(q, k, scale, masked, cd):
    """scale * Q K^T in the compute dtype, key heads repeated for GQA, masked scores -inf."""
    group = q.shape[1] // k.shape[1]
    kf = k.to(cd).repeat_interleave(group, dim=1)
    s = torch.matmul(q.to(cd), kf.transpose(-1, -2)) * scale
    return s if masked is None else s.masked_fill(masked, float("-inf")), kf, group


def _attention(query, key, value, head_num, input_layout, atten_mask, scale, pre_tockens, next_tockens,
               sparse_mode):
    op = "npu_fusion_attention"
    q, k, v, _ = _bnsd(op, query, key, value, head_num, input_layout)
    cd = compute_dtype(query, key, value)
    s, _, group = _scores(q, k, scale, _masked(op, sparse_mode, atten_mask, pre_tockens, next_tockens, q, k), cd)
    row_max = s.amax(dim=-1, keepdim=True)
    # a row with every key masked out (not reached by MindSpeed's calls) gives out 0, max -inf, sum 0
    p = torch.exp(s - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    row_sum = p.sum(dim=-1, keepdim=True)
    out = torch.matmul(p, v.to(cd).repeat_interleave(group, dim=1))
    out = out / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
    stats = [t.expand(*t.shape[:-1], _STATS).contiguous() for t in (row_max, row_sum)]
    return _from_bnsd(out.to(query.dtype), input_layout), stats[0], stats[1]


class _FusionAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, atten_mask, params):
        head_num, input_layout, scale, pre_tockens, next_tockens, sparse_mode = params
        out, softmax_max, softmax_sum = _attention(query, key, value, head_num, input_layout, atten_mask, scale,
                                                   pre_tockens, next_tockens, sparse_mode)
        ctx.save_for_backward(query, key, value, atten_mask, out, softmax_max, softmax_sum)
        ctx.params = params
        softmax_out = query.new_empty([0])
        ctx.mark_non_differentiable(softmax_max, softmax_sum, softmax_out)
        return out, softmax_max, softmax_sum, softmax_out, 0, 0, 0

    @staticmethod
    def backward(ctx, grad_out, *_):
        query, key, value, atten_mask, out, softmax_max, softmax_sum = ctx.saved_tensors
        head_num, input_layout, scale, pre_tockens, next_tockens, sparse_mode = ctx.params
        dq, dk, dv, _ = npu_fusion_attention_grad(
            query, key, value, grad_out, head_num, input_layout, atten_mask=atten_mask, softmax_max=softmax_max,
            softmax_sum=softmax_sum, attention_in=out, scale_value=scale, pre_tockens=pre_tockens,
            next_tockens=next_tockens, sparse_mode=sparse_mode)
        return dq, dk, dv, None, None


def npu_fusion_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, head_num: int,
                         input_layout: str, pse=None, padding_mask=None, atten_mask: Optional[torch.Tensor] = None,
                         scale: float = 1.0, keep_prob: float = 1.0, pre_tockens: int = 2147483647,
                         next_tockens: int = 2147483647, inner_precise: int = 0, prefix=None, actual_seq_qlen=None,
                         actual_seq_kvlen=None, sparse_mode: int = 0, gen_mask_parallel: bool = True,
                         sync: bool = False):
    """``torch_npu.npu_fusion_attention``: ``softmax(mask(scale * Q K^T)) V`` per head.

    query/key/value in input_layout (BSH [B,S,N*D], SBH [S,B,N*D], BSND, BNSD), key/value with
    N_kv heads dividing head_num; atten_mask (True = masked) and the band by sparse_mode (see
    ``_masked``). Returns 7 outputs: attention_out (query's layout and dtype, value's head dim),
    softmax_max and softmax_sum (float32 [B, N, Sq, 8], each row's max of the masked scaled scores
    and ``sum(exp(score - max))``, repeated over the last 8), softmax_out (empty [0]), and the
    dropout seed, offset and numels (0: no dropout). inner_precise, gen_mask_parallel and sync are
    precision/performance knobs. Differentiable in query, key and value (through
    ``npu_fusion_attention_grad``, as torch_npu registers it).
    """
    _check_modes("npu_fusion_attention", input_layout, pse, padding_mask, keep_prob, prefix, actual_seq_qlen,
                 actual_seq_kvlen, sparse_mode)
    return _FusionAttention.apply(query, key, value, atten_mask,
                                  (head_num, input_layout, scale, pre_tockens, next_tockens, sparse_mode))


def npu_fusion_attention_grad(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dy: torch.Tensor,
                              head_num: int, input_layout: str, pse=None, padding_mask=None,
                              atten_mask: Optional[torch.Tensor] = None, softmax_max: Optional[torch.Tensor] = None,
                              softmax_sum: Optional[torch.Tensor] = None, softmax_in=None,
                              attention_in: Optional[torch.Tensor] = None, scale_value: float = 1.0,
                              keep_prob: float = 1.0, pre_tockens: int = 2147483647, next_tockens: int = 2147483647,
                              inner_precise: int = 0, seed: int = 0, offset: int = 0, numels: int = 0, prefix=None,
                              actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode: int = 0,
                              gen_mask_parallel: bool = True, sync: bool = False):
    """``torch_npu.npu_fusion_attention_grad(...) -> (dq, dk, dv, dpse)``.

    Rebuilds the probabilities from the saved statistics, ``P = exp(scale * Q K^T - softmax_max) /
    softmax_sum`` (masked entries 0), and with O = attention_in: ``dV = P^T dy``,
    ``dS = P * (dy V^T - rowsum(dy * O))``, ``dQ = scale * dS K``, ``dK = scale * dS^T Q``, key/value
    grads summed over each GQA group. Given the statistics and output of a whole ring (MindSpeed's
    megatron_cp_algo), P and O are those of the whole row, so each KV block gets its exact share.
    Without softmax_max/softmax_sum/attention_in they are recomputed. dq/dk/dv have the inputs'
    layouts and query's dtype; dpse is empty [0].
    """
    op = "npu_fusion_attention_grad"
    _check_modes(op, input_layout, pse, padding_mask, keep_prob, prefix, actual_seq_qlen, actual_seq_kvlen,
                 sparse_mode)
    q, k, v, dv_dim = _bnsd(op, query, key, value, head_num, input_layout)
    do = _to_bnsd(dy, input_layout, dv_dim)
    cd = compute_dtype(query, key, value, dy)
    masked = _masked(op, sparse_mode, atten_mask, pre_tockens, next_tockens, q, k)
    s, kf, group = _scores(q, k, scale_value, masked, cd)
    if softmax_max is None or softmax_sum is None:
        row_max, row_sum = None, None
    else:
        if tuple(softmax_max.shape[:3]) != tuple(s.shape[:3]) or tuple(softmax_sum.shape[:3]) != tuple(s.shape[:3]):
            raise ValueError(f"{op}: softmax_max/softmax_sum of shapes {tuple(softmax_max.shape)}, "
                             f"{tuple(softmax_sum.shape)} do not fit [B, N, Sq, 8] = {list(s.shape[:3]) + [_STATS]}")
        row_max, row_sum = softmax_max[..., :1].to(cd), softmax_sum[..., :1].to(cd)
    if row_max is None:
        row_max = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
    if row_sum is None:
        row_sum = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
    vf = v.to(cd).repeat_interleave(group, dim=1)
    o = torch.matmul(p, vf) if attention_in is None else _to_bnsd(attention_in, input_layout, dv_dim).to(cd)
    dof = do.to(cd)
    grad_v = torch.matmul(p.transpose(-1, -2), dof)
    ds = p * (torch.matmul(dof, vf.transpose(-1, -2)) - (dof * o).sum(dim=-1, keepdim=True))
    grad_q = torch.matmul(ds, kf) * scale_value
    grad_k = torch.matmul(ds.transpose(-1, -2), q.to(cd)) * scale_value
    if group > 1:  # sum the grads of the query heads sharing a key/value head
        b, n_kv, skv = k.shape[0], k.shape[1], k.shape[2]
        grad_k = grad_k.reshape(b, n_kv, group, skv, grad_k.shape[-1]).sum(dim=2)
        grad_v = grad_v.reshape(b, n_kv, group, skv, grad_v.shape[-1]).sum(dim=2)
    return (*(_from_bnsd(g.to(query.dtype), input_layout) for g in (grad_q, grad_k, grad_v)), query.new_empty([0]))


def npu_ring_attention_update(prev_attn_out: torch.Tensor, prev_softmax_max: torch.Tensor,
                              prev_softmax_sum: torch.Tensor, cur_attn_out: torch.Tensor,
                              cur_softmax_max: torch.Tensor, cur_softmax_sum: torch.Tensor,
                              actual_seq_qlen: Optional[torch.Tensor] = None, layout: str = "SBH"):
    """MindSpeed's ``npu_ring_attention_update(...) -> (attn_out, softmax_max, softmax_sum)``
    (RingAttentionUpdateOpBuilder), the documented equivalent computation for layout SBH:

    ``max = maximum(prev_max, cur_max)``; ``sum = prev_sum * exp(prev_max - max) + cur_sum *
    exp(cur_max - max)``; ``attn_out = prev_out * (prev_sum * exp(prev_max - max) / sum) + cur_out
    * (cur_sum * exp(cur_max - max) / sum)``, the [B, N, S, 8] scales (first of the 8) spread over
    each head's D channels of the [S, B, N*D] outputs; attn_out in prev_attn_out's dtype.
    """
    if layout != "SBH":
        raise not_emulated("npu_ring_attention_update", f"layout={layout!r}")
    softmax_max = torch.maximum(prev_softmax_max, cur_softmax_max)
    prev_sum_scaled = prev_softmax_sum * torch.exp(prev_softmax_max - softmax_max)
    cur_sum_scaled = cur_softmax_sum * torch.exp(cur_softmax_max - softmax_max)
    softmax_sum = prev_sum_scaled + cur_sum_scaled
    b, n, s, _ = softmax_max.shape
    d = prev_attn_out.shape[-1] // n

    def to_sbh(scale):  # [B, N, S, 8] -> [S, B, N*D]
        return scale[..., 0].permute(2, 0, 1).unsqueeze(-1).expand(s, b, n, d).reshape(s, b, n * d)

    attn_out = prev_attn_out * to_sbh(prev_sum_scaled / softmax_sum) + cur_attn_out * to_sbh(
        cur_sum_scaled / softmax_sum)
    return attn_out.to(prev_attn_out.dtype), softmax_max, softmax_sum
