"""CPU emulations of the torch_npu and MindSpeed-JIT ops that MindSpeed core_r0.16.0's switches reach.

The CPU stand-in for ``torch_npu`` (issue 13) exposes these functions as ``torch_npu.<name>`` and
as the op modules MindSpeed's op builders would JIT-build against CANN (``npu_gmm*`` for
GMMOpBuilder/GMMV2OpBuilder, ``npu_rotary_position_embedding``, ``npu_ring_attention_update``,
``npu_groupmatmul_add_fp32``). Each op follows its documented semantics, not a guess:

- torch_npu's API reference (hiascend.com "ptaoplist" pages) and op-plugin's meta registrations
  for signatures, output shapes and dtypes;
- CANN's aclnn pages for the MoE routing-map ops (aclnnMoeTokenPermuteWithRoutingMap, its Grad,
  aclnnMoeTokenUnpermuteWithRoutingMap, its Grad);
- MindSpeed's ``docs/zh/ops/*.md`` (rms_norm, swiglu, npu_rotary_position_embedding, gmm,
  npu_groupmatmul_add, npu_ring_attention_update) and its call sites for the modes reached.

The attention ops (``npu_fusion_attention``, ``npu_fusion_attention_grad``,
``npu_ring_attention_update``) live in ``npu_attention_ops`` and are re-exported here, so every op
imports from this module. Only torch is imported.

Math runs in float32 for the documented dtypes (float16, bfloat16, float32) and in float64 for
float64 inputs, which the real ops do not take but the tests use as references. A mode or layout
that is not emulated raises ``NotImplementedError`` in one line naming the op and the mode.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

_ATTENTION_OPS = ("npu_fusion_attention", "npu_fusion_attention_grad", "npu_ring_attention_update")

__all__ = [
    "npu_rms_norm", "npu_swiglu", "npu_swiglu_backward", "npu_rotary_position_embedding",
    "npu_moe_token_permute_with_routing_map", "npu_moe_token_permute_with_routing_map_grad",
    "npu_moe_token_unpermute_with_routing_map", "_npu_moe_token_unpermute_with_routing_map",
    "npu_moe_token_unpermute_with_routing_map_grad",
    "npu_gmm", "npu_gmm_backward", "npu_gmm_backward_fusion", "npu_groupmatmul_add_fp32",
    *_ATTENTION_OPS,
]


def __getattr__(name):  # PEP 562: the attention ops import this module, so re-export them lazily
    if name in _ATTENTION_OPS:
        from mixexp.devices import npu_attention_ops

        return getattr(npu_attention_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def not_emulated(op: str, mode: str) -> NotImplementedError:
    """The one-line error for a mode the stand-in does not emulate."""
    return NotImplementedError(f"{op}: {mode} is not emulated by the CPU stand-in for torch_npu")


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float32, the NPU kernels' internal precision; float64 when a float64 tensor comes in."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


# ----------------------------------------------------------------------------- norms, activations, RoPE

def npu_rms_norm(x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6):
    """``torch_npu.npu_rms_norm(self, gamma, epsilon=1e-6) -> (y, rstd)``.

    ``rstd = 1 / sqrt(mean(x**2) + epsilon)`` over the trailing ``gamma.dim()`` dimensions of x
    (gamma matches x's trailing shape) and ``y = x * rstd * gamma``. y has x's shape and dtype;
    rstd is float32 with x's shape, those trailing dimensions set to 1 (op-plugin's meta
    registration). Differentiable in x and gamma.
    """
    k = gamma.dim()
    if k == 0 or k > x.dim() or tuple(x.shape[x.dim() - k:]) != tuple(gamma.shape):
        raise ValueError(f"npu_rms_norm: gamma of shape {tuple(gamma.shape)} does not match the trailing "
                         f"dimensions of x of shape {tuple(x.shape)}")
    cd = compute_dtype(x)
    xf = x.to(cd)
    rstd = torch.rsqrt(xf.pow(2).mean(dim=tuple(range(x.dim() - k, x.dim())), keepdim=True) + epsilon)
    return (xf * rstd * gamma.to(cd)).to(x.dtype), rstd


def _halves(x: torch.Tensor, dim: int, op: str):
    if x.shape[dim] % 2:
        raise ValueError(f"{op}: dimension {dim} of x (size {x.shape[dim]}) must be even")
    return x.to(compute_dtype(x)).chunk(2, dim=dim)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        a, b = _halves(x, dim, "npu_swiglu")
        ctx.save_for_backward(x)
        ctx.dim = dim
        return (F.silu(a) * b).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return npu_swiglu_backward(grad_output, x, ctx.dim), None


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch_npu.npu_swiglu(input, dim=-1)``: A, B = the first and second halves of x along dim;
    ``y = swish(A) * B = A * sigmoid(A) * B`` in x's dtype. Differentiable; its backward is
    ``npu_swiglu_backward`` (MindSpeed's fused swiglu reaches it only through autograd)."""
    return _SwiGLU.apply(x, dim)


def npu_swiglu_backward(grad_output: torch.Tensor, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch_npu.npu_swiglu_backward(grad_output, input, dim=-1)``: dx for ``npu_swiglu``, x's shape."""
    a, b = _halves(x, dim, "npu_swiglu_backward")
    g = grad_output.to(a.dtype)
    sig = torch.sigmoid(a)
    da = g * b * (sig * (1 + a * (1 - sig)))  # d silu(a) / da = sig * (1 + a * (1 - sig))
    return torch.cat((da, g * (a * sig)), dim=dim).to(x.dtype)


def npu_rotary_position_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                  mode: int = 0) -> torch.Tensor:
    """MindSpeed's ``npu_rotary_position_embedding(x, cos, sin, mode=0)`` (RotaryPositionEmbeddingOpBuilder).

    ``y = x * cos + rotate(x) * sin`` with x, cos, sin 4-D (cos/sin broadcast over x, e.g. S11D for
    SBND x). mode 0, rotate_half (GPT-NeoX): ``cat(-x2, x1)`` of the two halves of the last
    dimension; mode 1, rotate_interleaved (GPT-J): pairs ``(x[2i], x[2i+1]) -> (-x[2i+1], x[2i])``.
    y has x's dtype. Differentiable in x, cos and sin.
    """
    op = "npu_rotary_position_embedding"
    if mode not in (0, 1):
        raise not_emulated(op, f"mode={mode}")
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D, got shape {tuple(t.shape)}")
    if x.shape[-1] % 2:
        raise ValueError(f"{op}: the last dimension of x (size {x.shape[-1]}) must be even")
    if mode == 0:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    else:
        rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    return (x * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------- MoE routing-map permutation
# Without drop_and_pad every token goes to exactly topK experts and the permuted rows are grouped by
# expert (expert-major, tokens ascending): row p holds token rows[p]. The NPU's sorted_indices is NOT
# Megatron's rows: it is the stable argsort of rows, i.e. sorted_indices[j] is the row that holds the
# j-th (token, expert) slot in token-major order, so slot j belongs to token j // topK.
# With drop_and_pad, expert e keeps `capacity` rows and sorted_indices[e * capacity + c] is the token
# in that row (routed tokens first, ascending, then padding), as Megatron's sorted_indices.

def _routed_rows(routing_map: torch.Tensor) -> torch.Tensor:
    """The token of each permuted row, expert-major (Megatron's non-padded sorted_indices)."""
    num_tokens, num_experts = routing_map.shape
    token_ids = torch.arange(num_tokens, device=routing_map.device).expand(num_experts, -1)
    return token_ids.masked_select(routing_map.bool().T)


def _slot_tokens(n: int, num_tokens: int, device) -> torch.Tensor:
    """The token of each of the n token-major slots without drop_and_pad: slot j is token j // topK."""
    topk = max(n // num_tokens, 1) if num_tokens else 1
    return torch.arange(n, device=device) // topk


def _rows_of_slots(sorted_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Invert the non-padded sorted_indices (slot j sits in row sorted_indices[j]): the token of each row."""
    n = sorted_indices.numel()
    rows = torch.empty(n, dtype=torch.long, device=sorted_indices.device)
    rows[sorted_indices.long()] = _slot_tokens(n, num_tokens, sorted_indices.device)
    return rows


def _padded_experts(n: int, num_experts: int, device) -> torch.Tensor:
    """The expert of each permuted row with drop_and_pad: row e * capacity + c belongs to expert e."""
    return torch.arange(n, device=device) // max(n // num_experts, 1)


def _permute(tokens, routing_map, probs, num_out_tokens, drop_and_pad):
    op = "npu_moe_token_permute_with_routing_map"
    num_tokens, num_experts = routing_map.shape
    n_out = num_tokens if num_out_tokens is None else int(num_out_tokens)
    if drop_and_pad:
        capacity = n_out // num_experts
        chosen = routing_map.to(torch.int8).T.argsort(dim=-1, descending=True, stable=True)[:, :capacity]
        rows = chosen.reshape(-1)
        permuted_probs = None
        if probs is not None:
            flat = (torch.arange(num_experts, device=rows.device).unsqueeze(1) * num_tokens + chosen).reshape(-1)
            permuted_probs = probs.T.reshape(-1).index_select(0, flat)
        return tokens.index_select(0, rows), permuted_probs, rows.to(torch.int32)
    topk = n_out // num_tokens if num_tokens else 0
    per_row = routing_map.bool().sum(dim=1)
    if num_tokens and not bool((per_row == topk).all()):
        raise ValueError(f"{op}: without drop_and_pad every routing_map row must select num_out_tokens // "
                         f"num_tokens = {topk} experts, got rows selecting {sorted(set(per_row.tolist()))}")
    rows = _routed_rows(routing_map)
    permuted_probs = None if probs is None else probs.T.masked_select(routing_map.bool().T)
    return tokens.index_select(0, rows), permuted_probs, torch.argsort(rows, stable=True).to(torch.int32)


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens, routing_map, probs, num_out_tokens, drop_and_pad):
        permuted, permuted_probs, sorted_indices = _permute(tokens, routing_map, probs, num_out_tokens, drop_and_pad)
        ctx.save_for_backward(sorted_indices, routing_map)
        ctx.num_tokens, ctx.drop_and_pad = tokens.shape[0], drop_and_pad
        ctx.mark_non_differentiable(sorted_indices)
        return permuted, permuted_probs, sorted_indices

    @staticmethod
    def backward(ctx, permuted_grad, permuted_probs_grad, _):
        sorted_indices, routing_map = ctx.saved_tensors
        tokens_grad, probs_grad = npu_moe_token_permute_with_routing_map_grad(
            permuted_grad, permuted_probs_grad, sorted_indices, routing_map, routing_map.shape[1],
            ctx.num_tokens, ctx.drop_and_pad)
        return tokens_grad, None, probs_grad, None, None


def npu_moe_token_permute_with_routing_map(tokens: torch.Tensor, routing_map: torch.Tensor,
                                           probs: Optional[torch.Tensor] = None,
                                           num_out_tokens: Optional[int] = None, drop_and_pad: bool = False):
    """``torch_npu.npu_moe_token_permute_with_routing_map(tokens, routing_map, *, probs=None,
    num_out_tokens=None, drop_and_pad=False) -> (permuted_tokens, permuted_probs, sorted_indices)``.

    tokens [T, H], routing_map [T, E] (bool/int8), probs [T, E] or None; num_out_tokens defaults to T.
    Without drop_and_pad: topK = num_out_tokens // T, each routing_map row must select topK
    experts; permuted_tokens [T*topK, H] grouped by expert, ``permuted_probs =
    probs.T.masked_select(routing_map.T)``, sorted_indices (int32) = ``argsort(rows)``, see above.
    With drop_and_pad: capacity = num_out_tokens // E, ``sorted_indices =
    argsort(routing_map.T, descending, stable)[:, :capacity]`` flattened (int32), permuted_tokens
    = ``tokens[sorted_indices]`` [E*capacity, H], permuted_probs the matching ``probs[token, e]``.
    permuted_probs is None without probs. Differentiable in tokens and probs.
    """
    return _Permute.apply(tokens, routing_map, probs, num_out_tokens, drop_and_pad)


def npu_moe_token_permute_with_routing_map_grad(permuted_tokens_grad: torch.Tensor,
                                                permuted_probs_grad: Optional[torch.Tensor],
                                                sorted_indices: torch.Tensor, routing_map: torch.Tensor,
                                                experts_num: int, tokens_num: int, drop_and_pad: bool):
    """``torch_npu.npu_moe_token_permute_with_routing_map_grad(permuted_tokens_grad,
    permuted_probs_grad, sorted_indices, routing_map, experts_num, tokens_num, drop_and_pad)
    -> (tokens_grad [T, H], probs_grad [T, E] or None)``: the adjoint of the permute above
    (each token's grad sums its permuted rows; probs_grad scatters back to (token, expert))."""
    n = sorted_indices.numel()
    rows = sorted_indices.long() if drop_and_pad else _rows_of_slots(sorted_indices, tokens_num)
    tokens_grad = permuted_tokens_grad.new_zeros((tokens_num, permuted_tokens_grad.shape[1]))
    tokens_grad.index_add_(0, rows, permuted_tokens_grad)
    if permuted_probs_grad is None:
        return tokens_grad, None
    probs_grad_t = permuted_probs_grad.new_zeros((experts_num, tokens_num))
    if drop_and_pad:
        probs_grad_t[_padded_experts(n, experts_num, rows.device), rows] = permuted_probs_grad
    else:
        probs_grad_t.masked_scatter_(routing_map.bool().T, permuted_probs_grad)
    return tokens_grad, probs_grad_t.T.contiguous()


def _unpermute_rows(sorted_indices, num_tokens, drop_and_pad):
    """(token of each permuted row, out_index, permuted_token_id) as the aclnn page defines them."""
    if drop_and_pad:
        token_id, out_index = sorted_indices.sort(stable=True)
        return sorted_indices.long(), out_index.to(torch.int32), token_id.to(torch.int32)
    slot_token = _slot_tokens(sorted_indices.numel(), num_tokens, sorted_indices.device)
    return _rows_of_slots(sorted_indices, num_tokens), sorted_indices.to(torch.int32), slot_token.to(torch.int32)


def _permuted_probs(probs, routing_map, rows, drop_and_pad, op):
    if routing_map is None:
        raise ValueError(f"{op}: probs needs routing_map")
    if drop_and_pad:
        return probs[rows, _padded_experts(rows.numel(), routing_map.shape[1], rows.device)]
    return probs.T.masked_select(routing_map.bool().T)


def _npu_moe_token_unpermute_with_routing_map(permuted_tokens: torch.Tensor, sorted_indices: torch.Tensor,
                                              restore_shape: Sequence[int], probs: Optional[torch.Tensor] = None,
                                              routing_map: Optional[torch.Tensor] = None,
                                              drop_and_pad: bool = False):
    """``torch_npu._npu_moe_token_unpermute_with_routing_map(permuted_tokens, sorted_indices,
    restore_shape, *, probs=None, routing_map=None, drop_and_pad=False)
    -> (unpermuted_tokens, out_index, permuted_token_id, permute_probs)``.

    Adds each permuted row (times its prob when probs is given) back to its token:
    ``unpermuted[permuted_token_id[i]] += permuted[out_index[i]] * permute_probs[out_index[i]]``,
    unpermuted of restore_shape [T, H] in permuted_tokens' dtype. Without drop_and_pad
    out_index = sorted_indices and permuted_token_id[i] = i // topK; with it
    ``permuted_token_id, out_index = sorted_indices.sort()``. Both int32 of sorted_indices' shape;
    permute_probs is each permuted row's prob (None without probs).
    """
    op = "_npu_moe_token_unpermute_with_routing_map"
    num_tokens, hidden = (int(v) for v in restore_shape)
    rows, out_index, token_id = _unpermute_rows(sorted_indices, num_tokens, drop_and_pad)
    permute_probs, weighted = None, permuted_tokens
    if probs is not None:
        permute_probs = _permuted_probs(probs, routing_map, rows, drop_and_pad, op)
        weighted = permuted_tokens * permute_probs.unsqueeze(-1)
    unpermuted = weighted.new_zeros((num_tokens, hidden)).index_add_(0, rows, weighted)
    return unpermuted.to(permuted_tokens.dtype), out_index, token_id, permute_probs


class _Unpermute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, permuted_tokens, sorted_indices, restore_shape, probs, routing_map, drop_and_pad):
        out, out_index, token_id, _ = _npu_moe_token_unpermute_with_routing_map(
            permuted_tokens, sorted_indices, restore_shape, probs=probs, routing_map=routing_map,
            drop_and_pad=drop_and_pad)
        ctx.save_for_backward(permuted_tokens, probs, routing_map, out_index, token_id)
        ctx.restore_shape, ctx.drop_and_pad = restore_shape, drop_and_pad
        return out

    @staticmethod
    def backward(ctx, grad):
        permuted_tokens, probs, routing_map, out_index, token_id = ctx.saved_tensors
        tokens_grad, probs_grad = npu_moe_token_unpermute_with_routing_map_grad(
            grad, out_index, token_id, routing_map=routing_map,
            permuted_tokens=None if probs is None else permuted_tokens, probs=probs,
            drop_and_pad=ctx.drop_and_pad, restore_shape=ctx.restore_shape)
        return tokens_grad, None, None, probs_grad, None, None


def npu_moe_token_unpermute_with_routing_map(permuted_tokens: torch.Tensor, sorted_indices: torch.Tensor,
                                             restore_shape: Sequence[int], probs: Optional[torch.Tensor] = None,
                                             routing_map: Optional[torch.Tensor] = None,
                                             drop_and_pad: bool = False) -> torch.Tensor:
    """``torch_npu.npu_moe_token_unpermute_with_routing_map(...)``: the first output of
    ``_npu_moe_token_unpermute_with_routing_map``, differentiable in permuted_tokens and probs.
    (MindSpeed checks for this name and calls the underscored one.)"""
    return _Unpermute.apply(permuted_tokens, sorted_indices, restore_shape, probs, routing_map, drop_and_pad)


def npu_moe_token_unpermute_with_routing_map_grad(unpermuted_tokens_grad: torch.Tensor, out_index: torch.Tensor,
                                                  permuted_token_id: torch.Tensor,
                                                  routing_map: Optional[torch.Tensor] = None,
                                                  permuted_tokens: Optional[torch.Tensor] = None,
                                                  probs: Optional[torch.Tensor] = None, drop_and_pad: bool = False,
                                                  restore_shape: Optional[Sequence[int]] = None):
    """``torch_npu.npu_moe_token_unpermute_with_routing_map_grad(unpermuted_tokens_grad, out_index,
    permuted_token_id, routing_map=None, permuted_tokens=None, probs=None, drop_and_pad=False,
    restore_shape=None) -> (permuted_tokens_grad, probs_grad or None)``.

    ``g[out_index[i]] = unpermuted_tokens_grad[permuted_token_id[i]]``; with probs,
    ``permuted_tokens_grad = g * permute_probs`` and probs_grad [T, E] scatters
    ``sum_h(g * permuted_tokens)`` back to (token, expert). Without drop_and_pad each token owns
    topK = len(out_index) // T consecutive slots, so permuted_token_id is not read (MindSpeed
    passes sorted_indices for both index arguments there).
    """
    op = "npu_moe_token_unpermute_with_routing_map_grad"
    n, num_tokens = out_index.numel(), unpermuted_tokens_grad.shape[0]
    if drop_and_pad:
        rows = torch.empty(n, dtype=torch.long, device=out_index.device)
        rows[out_index.long()] = permuted_token_id.long()
    else:
        rows = _rows_of_slots(out_index, num_tokens)
    g = unpermuted_tokens_grad.index_select(0, rows)
    if probs is None:
        return g, None
    permute_probs = _permuted_probs(probs, routing_map, rows, drop_and_pad, op)
    by_row = (g * permuted_tokens).sum(dim=-1)
    probs_grad_t = g.new_zeros((probs.shape[1], num_tokens))
    if drop_and_pad:
        probs_grad_t[_padded_experts(n, probs.shape[1], rows.device), rows] = by_row.to(g.dtype)
    else:
        probs_grad_t.masked_scatter_(routing_map.bool().T, by_row.to(g.dtype))
    return (g * permute_probs.unsqueeze(-1)).to(g.dtype), probs_grad_t.T.contiguous()


# ----------------------------------------------------------------------------- grouped matmul (GMM)

def _group_sizes(group_list, group_list_type: int, op: str) -> list:
    """Group sizes from group_list: cumulative ends (group_list_type 0) or counts (1). The
    List[int] overload (aclnnGroupedMatmulV2) is always cumulative, whatever group_list_type says."""
    if group_list is None:
        raise ValueError(f"{op}: group_list is required for grouped matmul")
    if group_list_type not in (0, 1):
        raise not_emulated(op, f"group_list_type={group_list_type}")
    is_tensor = isinstance(group_list, torch.Tensor)
    values = [int(v) for v in (group_list.tolist() if is_tensor else group_list)]
    if not is_tensor or group_list_type == 0:
        values = [end - start for start, end in zip([0] + values[:-1], values)]
    if any(v < 0 for v in values):
        raise ValueError(f"{op}: group_list {group_list} gives a negative group size")
    return values


def npu_gmm(x: Sequence[torch.Tensor], weight: Sequence[torch.Tensor], bias: Sequence[torch.Tensor],
            group_list, group_type: int, group_list_type: int = 0):
    """``npu_gmm(x, weight, bias, group_list, group_type, group_list_type)`` of MindSpeed's GMM op
    modules (mindspeed/ops/gmm.py, docs/zh/ops/gmm.md): one x and one weight, returns ``[y]``.

    group_type 0 (m grouped): x [M, K], weight [G, K, N]; the rows of x split into G groups by
    group_list and ``y[rows_g] = x[rows_g] @ weight[g] (+ bias[0][g])``, y [M, N]. group_type 2
    (k grouped): x [M, K], weight [K, N]; ``y[g] = x[:, k_g] @ weight[k_g]``, y [G, M, N]. The group
    sizes must add up to the grouped dimension. y has x's dtype.
    """
    op = "npu_gmm"
    if len(x) != 1 or len(weight) != 1:
        raise not_emulated(op, f"{len(x)} x and {len(weight)} weight tensors (one of each is emulated)")
    a, w = x[0], weight[0]
    sizes = _group_sizes(group_list, group_list_type, op)
    if group_type == 0:
        if a.dim() != 2 or w.dim() != 3 or w.shape[0] != len(sizes):
            raise ValueError(f"{op}: group_type 0 needs x [M, K] and weight [{len(sizes)}, K, N], got "
                             f"{tuple(a.shape)} and {tuple(w.shape)}")
        if sum(sizes) != a.shape[0]:
            raise ValueError(f"{op}: group sizes {sizes} add up to {sum(sizes)}, not x's {a.shape[0]} rows")
        parts = [xg @ w[g] for g, xg in enumerate(a.split(sizes, dim=0))]
        if bias:
            parts = [p + bias[0][g] for g, p in enumerate(parts)]
        y = torch.cat(parts, dim=0)
    elif group_type == 2:
        if bias:
            raise not_emulated(op, "bias with group_type=2")
        if a.dim() != 2 or w.dim() != 2 or sum(sizes) != a.shape[1] or w.shape[0] != a.shape[1]:
            raise ValueError(f"{op}: group_type 2 needs x [M, K], weight [K, N] and group sizes adding up to K, "
                             f"got {tuple(a.shape)}, {tuple(w.shape)} and {sizes}")
        y = torch.stack([ag @ wg for ag, wg in zip(a.split(sizes, dim=1), w.split(sizes, dim=0))])
    else:
        raise not_emulated(op, f"group_type={group_type}")
    return [y.to(a.dtype)]


def npu_gmm_backward(grad: Sequence[torch.Tensor], x: Sequence[torch.Tensor], weight: Sequence[torch.Tensor],
                     group_list, group_list_type: int = 0):
    """``npu_gmm_backward(grad, x, weight, group_list, group_list_type) -> (dx, dw, dbias)`` for
    group_type 0: ``dx = gmm(grad, weight^T)``, ``dw = gmm_k(x^T, grad)`` reshaped to weight's
    shape, dbias ``[]`` (bias gradients are not supported by the op)."""
    dx = npu_gmm(grad, [w.transpose(-1, -2) for w in weight], [], group_list, 0, group_list_type)
    dw = npu_gmm([t.transpose(-1, -2) for t in x], grad, [], group_list, 2, group_list_type)
    return dx, [d.reshape(w.shape) for d, w in zip(dw, weight)], []


def npu_gmm_backward_fusion(grad: Sequence[torch.Tensor], weight: Sequence[torch.Tensor], group_list,
                            group_list_type: int = 0):
    """``npu_gmm_backward_fusion(grad, weight, group_list, group_list_type) -> (dx, [], [])``: dx only,
    the weight gradient goes to main_grad through ``npu_groupmatmul_add_fp32``."""
    return npu_gmm(grad, [w.transpose(-1, -2) for w in weight], [], group_list, 0, group_list_type), [], []


def npu_groupmatmul_add_fp32(x: torch.Tensor, dy: torch.Tensor, group_list: torch.Tensor,
                             grad: torch.Tensor) -> torch.Tensor:
    """MindSpeed's ``npu_groupmatmul_add_fp32(x, dy, grouplist, grad)`` (GroupMatmulAddOpBuilder):
    in place ``grad += (x[rows_g]^T @ dy[rows_g] for each g).view(grad.shape)``, group_list
    cumulative; grad is float32 (a weight's main_grad)."""
    dw = npu_gmm([x.transpose(-1, -2)], [dy], [], group_list, 2, 0)[0]
    return grad.add_(dw.reshape(grad.shape).to(grad.dtype))
