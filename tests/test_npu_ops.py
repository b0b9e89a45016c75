"""The torch_npu CPU stand-in's op emulations (mixexp/devices/npu_ops.py) against plain torch.

References are written independently of the ops: float64 formulas, autograd for gradients,
megatron-core 0.16.1's own permute/unpermute and RoPE, a per-expert loop of matmuls for GMM.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixexp.devices import npu_ops as ops

F64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype).requires_grad_(requires_grad)


def not_emulated(op, mode):
    """The regex of the one-line error for a mode the stand-in does not emulate."""
    return f"^{re.escape(op)}: {re.escape(mode)} is not emulated by the CPU stand-in for torch_npu$"


def test_module_imports_with_torch_only():
    code = ("import sys, mixexp.devices.npu_ops as o; o.npu_fusion_attention; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch_npu', 'mindspeed', 'megatron')]; "
            "assert not bad, bad")
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))


# ----------------------------------------------------------------------------- RMSNorm, SwiGLU, RoPE

@pytest.mark.parametrize("gamma_dims", [1, 2])
def test_rms_norm_values_and_rstd_shape(gamma_dims):
    x = randn(2, 3, 4, 6)
    gamma = randn(*x.shape[4 - gamma_dims:], seed=1)
    dims = tuple(range(4 - gamma_dims, 4))
    rstd_ref = 1 / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + 1e-5)
    y, rstd = ops.npu_rms_norm(x, gamma, epsilon=1e-5)
    assert rstd.shape == (2, 3, 4, 6)[:4 - gamma_dims] + (1,) * gamma_dims
    torch.testing.assert_close(rstd, rstd_ref, **F64)
    torch.testing.assert_close(y, x * rstd_ref * gamma, **F64)
    y32, rstd32 = ops.npu_rms_norm(x.float(), gamma.float())  # default epsilon 1e-6
    assert (y32.dtype, rstd32.dtype) == (torch.float32, torch.float32)
    torch.testing.assert_close(y32.double(), x * gamma / torch.sqrt((x * x).mean(dims, keepdim=True) + 1e-6), **F32)


def test_rms_norm_bf16_keeps_dtype_with_float32_rstd():
    x = randn(4, 8, dtype=torch.bfloat16)
    y, rstd = ops.npu_rms_norm(x, torch.ones(8, dtype=torch.bfloat16))
    assert (y.dtype, rstd.dtype, rstd.shape) == (torch.bfloat16, torch.float32, (4, 1))


def test_rms_norm_grads_match_autograd_reference():
    x, gamma = randn(3, 5, requires_grad=True), randn(5, seed=1, requires_grad=True)
    dy = randn(3, 5, seed=2)
    dx, dgamma = torch.autograd.grad(ops.npu_rms_norm(x, gamma)[0], (x, gamma), dy)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gamma
    rdx, rdgamma = torch.autograd.grad(ref, (x, gamma), dy)
    torch.testing.assert_close(dx, rdx, **F64)
    torch.testing.assert_close(dgamma, rdgamma, **F64)


def test_rms_norm_rejects_gamma_not_matching_trailing_dims():
    with pytest.raises(ValueError, match="^npu_rms_norm: gamma of shape"):
        ops.npu_rms_norm(randn(2, 4), randn(3))


@pytest.mark.parametrize("dim", [-1, 0])
def test_swiglu_forward_and_backward(dim):
    x = randn(4, 6, requires_grad=True)
    a, b = x.chunk(2, dim=dim)
    ref = a * torch.sigmoid(a) * b
    y = ops.npu_swiglu(x, dim=dim)
    torch.testing.assert_close(y, ref, **F64)
    dy = randn(*ref.shape, seed=3)
    (dx,) = torch.autograd.grad(y, x, dy)
    (rdx,) = torch.autograd.grad(ref, x, dy)
    torch.testing.assert_close(dx, rdx, **F64)
    torch.testing.assert_close(ops.npu_swiglu_backward(dy, x.detach(), dim), rdx, **F64)
    assert ops.npu_swiglu(x.detach().float(), dim).dtype == torch.float32


def test_swiglu_odd_dimension_is_an_error():
    with pytest.raises(ValueError, match=r"^npu_swiglu: dimension -1 of x \(size 5\) must be even$"):
        ops.npu_swiglu(randn(2, 5))


@pytest.mark.parametrize("mode", [0, 1])
def test_rope_matches_documented_formula_and_megatron(mode):
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    x = randn(5, 2, 3, 8)  # SBND
    freqs = randn(5, 1, 1, 8, seed=1)
    cos, sin = torch.cos(freqs), torch.sin(freqs)
    if mode == 0:
        rotated = torch.cat((-x[..., 4:], x[..., :4]), dim=-1)
    else:  # pairs (x0, x1) -> (-x1, x0)
        rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).reshape(x.shape)
    y = ops.npu_rotary_position_embedding(x, cos, sin, mode)
    torch.testing.assert_close(y, x * cos + rotated * sin, **F64)
    x32, f32 = x.float(), freqs.float()
    y32 = ops.npu_rotary_position_embedding(x32, torch.cos(f32), torch.sin(f32), mode)
    assert torch.equal(y32, _apply_rotary_pos_emb_bshd(x32, f32, rotary_interleaved=bool(mode)))


@pytest.mark.parametrize("mode", [0, 1])
def test_rope_is_differentiable_in_x_cos_sin(mode):
    x = randn(2, 3, 1, 4, requires_grad=True)
    cos, sin = randn(2, 1, 1, 4, seed=1, requires_grad=True), randn(2, 1, 1, 4, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: ops.npu_rotary_position_embedding(*t, mode), (x, cos, sin))


def test_rope_unsupported_mode_and_shape():
    x = randn(2, 1, 1, 4)
    with pytest.raises(NotImplementedError, match=not_emulated("npu_rotary_position_embedding", "mode=2")):
        ops.npu_rotary_position_embedding(x, x, x, 2)
    with pytest.raises(ValueError, match=r"^npu_rotary_position_embedding: x must be 4-D, got shape \(2, 4\)$"):
        ops.npu_rotary_position_embedding(x[:, 0, 0], x, x)


# ----------------------------------------------------------------------------- MoE permute / unpermute

@pytest.fixture(scope="module")
def mcore():
    from megatron.core.transformer.moe import moe_utils

    return moe_utils


def routing(num_tokens=6, num_experts=4, topk=2, seed=0):
    scores = torch.rand(num_tokens, num_experts, generator=gen(seed), dtype=torch.float64)
    top = scores.topk(topk, dim=1).indices
    routing_map = torch.zeros(num_tokens, num_experts, dtype=torch.bool).scatter(1, top, True)
    probs = torch.softmax(scores, dim=1) * routing_map  # Megatron's probs are zero off the map
    return routing_map, probs


def test_permute_matches_megatron(mcore):
    tokens, (routing_map, probs) = randn(6, 3), routing()
    permuted, permuted_probs, sorted_indices = ops.npu_moe_token_permute_with_routing_map(
        tokens, routing_map, probs=probs, num_out_tokens=12)
    ref, ref_probs, ref_rows = mcore.permute(tokens, routing_map, probs=probs, num_out_tokens=12)
    assert torch.equal(permuted, ref) and torch.equal(permuted_probs, ref_probs)
    # the NPU's sorted_indices maps token-major slots to permuted rows: argsort of Megatron's
    assert sorted_indices.dtype == torch.int32 and sorted_indices.shape == (12,)
    assert torch.equal(sorted_indices.long(), torch.argsort(ref_rows, stable=True))
    assert torch.equal(ref_rows[sorted_indices.long()], torch.arange(6).repeat_interleave(2))
    assert ops.npu_moe_token_permute_with_routing_map(tokens, routing_map, num_out_tokens=12)[1] is None


@pytest.mark.parametrize("with_probs", [False, True])
def test_unpermute_matches_megatron(mcore, with_probs):
    tokens, (routing_map, probs) = randn(6, 3), routing(seed=1)
    probs = probs if with_probs else None
    permuted, _, sorted_indices = ops.npu_moe_token_permute_with_routing_map(tokens, routing_map, num_out_tokens=12)
    _, _, ref_rows = mcore.permute(tokens, routing_map, num_out_tokens=12)
    expert_out = randn(12, 3, seed=2) + permuted
    ref = mcore.unpermute(expert_out, ref_rows, tokens.shape, probs=probs, routing_map=routing_map)
    out, out_index, token_id, permute_probs = ops._npu_moe_token_unpermute_with_routing_map(
        expert_out, sorted_indices, tokens.shape, probs=probs, routing_map=routing_map)
    torch.testing.assert_close(out, ref, **F64)
    assert out_index.dtype == token_id.dtype == torch.int32 and out_index.shape == token_id.shape == (12,)
    assert torch.equal(token_id, torch.arange(6, dtype=torch.int32).repeat_interleave(2))
    assert (permute_probs is None) == (probs is None)
    if with_probs:
        torch.testing.assert_close(permute_probs, probs.T.masked_select(routing_map.T), **F64)
    public = ops.npu_moe_token_unpermute_with_routing_map(expert_out, sorted_indices, tokens.shape, probs=probs,
                                                          routing_map=routing_map)
    torch.testing.assert_close(public, ref, **F64)


def _permute_unpermute_grads(permute, unpermute, tokens, probs, routing_map, num_out, drop_and_pad, weights):
    """tokens -> permute (probs carried) -> expert op -> unpermute weighted by probs: grads of both inputs."""
    tokens, probs = tokens.clone().requires_grad_(), probs.clone().requires_grad_()
    permuted, permuted_probs, indices = permute(tokens, routing_map, probs=probs, num_out_tokens=num_out,
                                                drop_and_pad=drop_and_pad)
    hidden = permuted * weights + permuted_probs.unsqueeze(-1)
    out = unpermute(hidden, indices, tokens.shape, probs=probs, routing_map=routing_map, drop_and_pad=drop_and_pad)
    loss = (out * out).sum()
    return (out.detach(), *torch.autograd.grad(loss, (tokens, probs)))


@pytest.mark.parametrize("drop_and_pad", [False, True])
def test_autograd_through_permute_and_unpermute_matches_megatron(mcore, drop_and_pad):
    tokens, (routing_map, probs) = randn(8, 3), routing(num_tokens=8, seed=2)
    num_out = 4 * 3 if drop_and_pad else 16  # capacity 3 (some experts padded, some dropping) or 8 tokens x top-2
    weights = randn(num_out, 3, seed=4)
    got = _permute_unpermute_grads(ops.npu_moe_token_permute_with_routing_map,
                                   ops.npu_moe_token_unpermute_with_routing_map, tokens, probs, routing_map,
                                   num_out, drop_and_pad, weights)
    ref = _permute_unpermute_grads(mcore.permute, mcore.unpermute, tokens, probs, routing_map, num_out,
                                   drop_and_pad, weights)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, **F64)


def test_drop_and_pad_permute_matches_megatron(mcore):
    tokens, (routing_map, probs) = randn(8, 3), routing(num_tokens=8, seed=3)
    got = ops.npu_moe_token_permute_with_routing_map(tokens, routing_map, probs=probs, num_out_tokens=12,
                                                     drop_and_pad=True)
    ref = mcore.permute(tokens, routing_map, probs=probs, num_out_tokens=12, drop_and_pad=True)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert got[2].dtype == torch.int32 and torch.equal(got[2].long(), ref[2])  # token ids, as Megatron's


@pytest.mark.parametrize("drop_and_pad", [False, True])
def test_grad_ops_called_as_mindspeed_calls_them(mcore, drop_and_pad):
    """mindspeed/te/pytorch/permutation.py: permute grad positionally; unpermute grad with
    (sorted_indices, sorted_indices) without drop_and_pad, (out_index, permuted_token_id) with it."""
    tokens, (routing_map, probs) = randn(8, 3), routing(num_tokens=8, seed=5)
    num_out = 12 if drop_and_pad else 16
    permuted, permuted_probs, sorted_indices = ops.npu_moe_token_permute_with_routing_map(
        tokens, routing_map, probs=probs, num_out_tokens=num_out, drop_and_pad=drop_and_pad)
    g_perm, g_probs = randn(num_out, 3, seed=6), randn(num_out, seed=7)
    t_ref, p_ref = tokens.clone().requires_grad_(), probs.clone().requires_grad_()
    r_perm, r_probs, r_rows = mcore.permute(t_ref, routing_map, probs=p_ref, num_out_tokens=num_out,
                                            drop_and_pad=drop_and_pad)
    ref_grads = torch.autograd.grad((r_perm, r_probs), (t_ref, p_ref), (g_perm, g_probs))
    grads = ops.npu_moe_token_permute_with_routing_map_grad(g_perm, g_probs, sorted_indices, routing_map, 4, 8,
                                                            drop_and_pad)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **F64)
    assert ops.npu_moe_token_permute_with_routing_map_grad(g_perm, None, sorted_indices, routing_map, 4, 8,
                                                           drop_and_pad)[1] is None

    x_ref, p_ref = r_perm.detach().clone().requires_grad_(), probs.clone().requires_grad_()
    g_out = randn(8, 3, seed=8)
    ref_out = mcore.unpermute(x_ref, r_rows, tokens.shape, probs=p_ref, routing_map=routing_map,
                              drop_and_pad=drop_and_pad)
    ref_grads = torch.autograd.grad(ref_out, (x_ref, p_ref), g_out)
    _, out_index, token_id, _ = ops._npu_moe_token_unpermute_with_routing_map(
        permuted, sorted_indices, tokens.shape, probs=probs, routing_map=routing_map, drop_and_pad=drop_and_pad)
    index_args = (out_index, token_id) if drop_and_pad else (sorted_indices, sorted_indices)
    grads = ops.npu_moe_token_unpermute_with_routing_map_grad(
        g_out, *index_args, routing_map=routing_map, permuted_tokens=permuted, probs=probs,
        drop_and_pad=drop_and_pad, restore_shape=tokens.shape)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **F64)
    no_probs = ops.npu_moe_token_unpermute_with_routing_map_grad(g_out, *index_args, routing_map=routing_map,
                                                                 drop_and_pad=drop_and_pad)
    ref_no_probs = torch.autograd.grad(mcore.unpermute(x_ref, r_rows, tokens.shape, routing_map=routing_map,
                                                       drop_and_pad=drop_and_pad), x_ref, g_out)[0]
    torch.testing.assert_close(no_probs[0], ref_no_probs, **F64)
    assert no_probs[1] is None


def test_permute_without_pad_needs_topk_experts_per_row():
    routing_map = torch.tensor([[True, True], [True, False]])
    with pytest.raises(ValueError, match=r"^npu_moe_token_permute_with_routing_map: without drop_and_pad every "
                                         r"routing_map row must select num_out_tokens // num_tokens = 2 experts, "
                                         r"got rows selecting \[1, 2\]$"):
        ops.npu_moe_token_permute_with_routing_map(randn(2, 3), routing_map, num_out_tokens=4)


# ----------------------------------------------------------------------------- grouped matmul

def loop_gmm(x, w, sizes):
    """One matmul per expert over its rows of x."""
    outs, start = [], 0
    for g, n in enumerate(sizes):
        outs.append(x[start:start + n] @ w[g])
        start += n
    return torch.cat(outs)


SIZES = [3, 0, 2, 4]  # an expert with no tokens included


@pytest.mark.parametrize("group_list,group_list_type", [
    (torch.tensor([3, 3, 5, 9]), 0), (torch.tensor(SIZES), 1), ([3, 3, 5, 9], 0)])
def test_gmm_forward_matches_per_expert_loop(group_list, group_list_type):
    x, w = randn(9, 5), randn(4, 5, 6, seed=1)
    (y,) = ops.npu_gmm([x], [w], [], group_list, 0, group_list_type)
    assert y.shape == (9, 6) and y.dtype == x.dtype
    torch.testing.assert_close(y, loop_gmm(x, w, SIZES), **F64)
    bias = randn(4, 6, seed=2)
    (yb,) = ops.npu_gmm([x], [w], [bias], group_list, 0, group_list_type)
    torch.testing.assert_close(yb, loop_gmm(x, w, SIZES) + bias.repeat_interleave(torch.tensor(SIZES), dim=0), **F64)


@pytest.mark.parametrize("transposed", [False, True])
def test_gmm_backward_matches_autograd_of_loop(transposed):
    x = randn(9, 5, requires_grad=True)
    w_store = randn(4, 6, 5, seed=1) if transposed else randn(4, 5, 6, seed=1)
    w = (w_store.transpose(-1, -2) if transposed else w_store).requires_grad_()  # MindSpeed passes w.t() views too
    dy = randn(9, 6, seed=2)
    rdx, rdw = torch.autograd.grad(loop_gmm(x, w, SIZES), (x, w), dy)
    group_list = torch.tensor([3, 3, 5, 9])
    dx, dw, dbias = ops.npu_gmm_backward([dy], [x.detach()], [w.detach()], group_list, 0)
    torch.testing.assert_close(dx[0], rdx, **F64)
    assert dw[0].shape == w.shape and dbias == []
    torch.testing.assert_close(dw[0], rdw, **F64)
    fdx, fdw, fdbias = ops.npu_gmm_backward_fusion([dy], [w.detach()], torch.tensor(SIZES), 1)
    torch.testing.assert_close(fdx[0], rdx, **F64)
    assert fdw == [] and fdbias == []


def test_gmm_k_grouped_and_groupmatmul_add():
    x, dy = randn(9, 5), randn(9, 6, seed=1)
    (y,) = ops.npu_gmm([x.t()], [dy], [], torch.tensor(SIZES), 2, 1)
    ref = torch.stack([x[s:s + n].t() @ dy[s:s + n] for s, n in zip([0, 3, 3, 5], SIZES)])
    assert y.shape == (4, 5, 6)
    torch.testing.assert_close(y, ref, **F64)
    main_grad = randn(5, 24, seed=2)  # a [H, E*F] weight's main_grad, viewed as [E, H, F] by the experts
    expected = main_grad + ref.reshape(5, 24)
    ops.npu_groupmatmul_add_fp32(x, dy, torch.tensor([3, 3, 5, 9]), main_grad)
    torch.testing.assert_close(main_grad, expected, **F64)


def test_gmm_errors():
    x, w = randn(9, 5), randn(4, 5, 6)
    with pytest.raises(NotImplementedError, match=not_emulated("npu_gmm", "group_type=1")):
        ops.npu_gmm([x], [w], [], torch.tensor(SIZES), 1, 1)
    with pytest.raises(NotImplementedError, match=not_emulated("npu_gmm", "group_list_type=2")):
        ops.npu_gmm([x], [w], [], torch.tensor(SIZES), 0, 2)
    with pytest.raises(ValueError, match=r"^npu_gmm: group sizes \[3, 0, 2, 3\] add up to 8, not x's 9 rows$"):
        ops.npu_gmm([x], [w], [], torch.tensor([3, 0, 2, 3]), 0, 1)


# ----------------------------------------------------------------------------- flash attention

def to_layout(t, layout):  # t [B, N, S, D]
    b, n, s, d = t.shape
    return {"BNSD": t, "BSND": t.permute(0, 2, 1, 3), "BSH": t.permute(0, 2, 1, 3).reshape(b, s, n * d),
            "SBH": t.permute(2, 0, 1, 3).reshape(s, b, n * d)}[layout].contiguous()


def ref_attention(q, k, v, allowed, scale):
    """float64 softmax attention on [B, N, S, D] with key/value heads repeated for GQA."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, s.amax(-1), torch.exp(s - s.amax(-1, keepdim=True)).sum(-1)


def qkv(b=2, n=4, n_kv=2, sq=5, skv=7, d=4, seed=0, requires_grad=False):
    return (randn(b, n, sq, d, seed=seed, requires_grad=requires_grad),
            randn(b, n_kv, skv, d, seed=seed + 1, requires_grad=requires_grad),
            randn(b, n_kv, skv, d, seed=seed + 2, requires_grad=requires_grad))


def band(sq, skv, lo, hi):
    """allowed[i, j] = lo <= j - i <= hi"""
    offset = torch.arange(skv).unsqueeze(0) - torch.arange(sq).unsqueeze(1)
    return (offset >= lo) & (offset <= hi)


@pytest.mark.parametrize("layout", ["BSH", "SBH", "BSND", "BNSD"])
def test_fusion_attention_layouts_gqa_and_outputs(layout):
    q, k, v = qkv()
    outs = ops.npu_fusion_attention(to_layout(q, layout), to_layout(k, layout), to_layout(v, layout), 4, layout,
                                    scale=0.3)
    assert len(outs) == 7 and outs[4:] == (0, 0, 0)
    out, softmax_max, softmax_sum, softmax_out = outs[:4]
    ref_out, ref_max, ref_sum = ref_attention(q, k, v, torch.ones(5, 7, dtype=torch.bool), 0.3)
    torch.testing.assert_close(out, to_layout(ref_out, layout), **F64)
    assert softmax_max.shape == softmax_sum.shape == (2, 4, 5, 8) and softmax_out.shape == (0,)
    torch.testing.assert_close(softmax_max, ref_max.unsqueeze(-1).expand(2, 4, 5, 8), **F64)
    torch.testing.assert_close(softmax_sum, ref_sum.unsqueeze(-1).expand(2, 4, 5, 8), **F64)


def test_fusion_attention_float32_dtypes():
    q, k, v = (t.float() for t in qkv())
    out, softmax_max, softmax_sum, *_ = ops.npu_fusion_attention(to_layout(q, "SBH"), to_layout(k, "SBH"),
                                                                  to_layout(v, "SBH"), 4, "SBH", scale=0.5)
    assert (out.dtype, softmax_max.dtype, softmax_sum.dtype) == (torch.float32,) * 3
    ref_out = ref_attention(*(t.double() for t in (q, k, v)), torch.ones(5, 7, dtype=torch.bool), 0.5)[0]
    torch.testing.assert_close(out.double(), to_layout(ref_out, "SBH"), **F32)


def _masks(sparse_mode, sq, skv):
    """(atten_mask, pre_tockens, next_tockens, allowed) for a sparse mode, allowed built independently."""
    if sparse_mode == 0:  # a user mask plus the band from the top-left corner (j - i in [-3, 1])
        mask = torch.rand(2, 1, sq, skv, generator=gen(9)) < 0.3
        mask[..., torch.arange(sq), torch.arange(sq)] = False  # every row keeps its diagonal key
        return mask, 3, 1, ~mask & band(sq, skv, -3, 1)
    if sparse_mode == 1:  # the full mask, pre/next ignored
        mask = torch.rand(sq, skv, generator=gen(10)) < 0.4
        mask[:, 0] = False
        return mask, 0, 0, ~mask
    compressed = torch.ones(2048, 2048, dtype=torch.bool).triu(diagonal=1)
    if sparse_mode == 2:  # causal from the top-left corner
        return compressed, 0, 0, torch.ones(sq, skv, dtype=torch.bool).tril()
    if sparse_mode == 3:  # causal from the bottom-right corner
        return compressed, 0, 0, torch.ones(sq, skv, dtype=torch.bool).tril(diagonal=skv - sq)
    return compressed, 2, 1, band(sq, skv, skv - sq - 2, skv - sq + 1)  # 4: band from the bottom-right


@pytest.mark.parametrize("sparse_mode", [0, 1, 2, 3, 4])
def test_fusion_attention_sparse_modes_forward_and_grad(sparse_mode):
    q, k, v = qkv(requires_grad=True)
    mask, pre, nxt, allowed = _masks(sparse_mode, 5, 7)
    args = dict(atten_mask=mask, scale=0.4, pre_tockens=pre, next_tockens=nxt, sparse_mode=sparse_mode)
    out, softmax_max, softmax_sum, *_ = ops.npu_fusion_attention(q, k, v, 4, "BNSD", **args)
    ref_out, ref_max, ref_sum = ref_attention(q, k, v, allowed, 0.4)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(softmax_max[..., 3], ref_max, **F64)
    torch.testing.assert_close(softmax_sum[..., 7], ref_sum, **F64)
    dy = randn(*out.shape, seed=11)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dy)
    grads = ops.npu_fusion_attention_grad(
        q.detach(), k.detach(), v.detach(), dy, 4, "BNSD", atten_mask=mask, softmax_max=softmax_max,
        softmax_sum=softmax_sum, attention_in=out.detach(), scale_value=0.4, pre_tockens=pre, next_tockens=nxt,
        sparse_mode=sparse_mode)
    assert len(grads) == 4 and grads[3].shape == (0,)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **F64)
    autograd_grads = torch.autograd.grad(out, (q, k, v), dy)  # the plain flash-attention path backprops
    for g, r in zip(autograd_grads, ref_grads):
        torch.testing.assert_close(g, r, **F64)
    if sparse_mode >= 2:
        with pytest.raises(ValueError, match=f"^npu_fusion_attention: sparse_mode={sparse_mode} needs atten_mask "
                                             r"\(the compressed 2048x2048 upper-triangular mask\), got None$"):
            ops.npu_fusion_attention(q, k, v, 4, "BNSD", **dict(args, atten_mask=None))


def test_fusion_attention_grad_sbh_gqa_without_saved_statistics():
    q, k, v = qkv(requires_grad=True)
    allowed = torch.ones(5, 7, dtype=torch.bool).tril(diagonal=2)
    ref_out = ref_attention(q, k, v, allowed, 0.5)[0]
    dy = randn(*ref_out.shape, seed=12)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dy)
    grads = ops.npu_fusion_attention_grad(*(to_layout(t.detach(), "SBH") for t in (q, k, v)), to_layout(dy, "SBH"),
                                          4, "SBH", atten_mask=~allowed, scale_value=0.5, sparse_mode=1)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, to_layout(r, "SBH"), **F64)


@pytest.mark.parametrize("kwargs,mode", [
    (dict(keep_prob=0.9), "keep_prob=0.9 (attention dropout)"),
    (dict(input_layout="TND"), "input_layout='TND'"),
    (dict(sparse_mode=5), "sparse_mode=5"),
    (dict(pse=torch.zeros(1)), "pse (given)"),
    (dict(actual_seq_qlen=[5, 10]), "actual_seq_qlen (given)"),
])
def test_fusion_attention_unsupported_modes(kwargs, mode):
    q, k, v = qkv()
    args = dict(input_layout="BNSD", **kwargs) if "input_layout" not in kwargs else kwargs
    for op, call in (("npu_fusion_attention", lambda: ops.npu_fusion_attention(q, k, v, 4, **args)),
                     ("npu_fusion_attention_grad", lambda: ops.npu_fusion_attention_grad(q, k, v, q, 4, **args))):
        with pytest.raises(NotImplementedError, match=not_emulated(op, mode)):
            call()


# ----------------------------------------------------------------------------- ring attention

def test_ring_update_of_two_key_halves_equals_attention_over_all_keys():
    q, k, v = qkv(b=1, sq=6, skv=8)
    sbh = [to_layout(t, "SBH") for t in (q, k, v)]
    halves = [ops.npu_fusion_attention(sbh[0], sbh[1][s], sbh[2][s], 4, "SBH", scale=0.5)
              for s in (slice(0, 3), slice(3, 8))]
    out, softmax_max, softmax_sum = ops.npu_ring_attention_update(*halves[0][:3], *halves[1][:3])
    full_out, full_max, full_sum, *_ = ops.npu_fusion_attention(*sbh, 4, "SBH", scale=0.5)
    torch.testing.assert_close(out, full_out, **F64)
    torch.testing.assert_close(softmax_max, full_max, **F64)
    torch.testing.assert_close(softmax_sum, full_sum, **F64)
    f32 = ops.npu_ring_attention_update(*(t.float() for t in halves[0][:3]), *(t.float() for t in halves[1][:3]))
    assert [t.dtype for t in f32] == [torch.float32] * 3
    with pytest.raises(NotImplementedError, match=not_emulated("npu_ring_attention_update", "layout='TND'")):
        ops.npu_ring_attention_update(*halves[0][:3], *halves[1][:3], layout="TND")


def test_megatron_cp_algo_causal_schedule_equals_causal_attention():
    """cp=2 as MindSpeed's CausalRegularAttentionStrategy runs it (SBH, GQA): rank r holds sequence
    chunks (r, 3 - r); its diagonal block uses sparse_mode 3 with the compressed 2048 mask, the
    blocks with the other rank's KV no mask; outputs merge with npu_ring_attention_update, and each
    block's grad uses the whole ring's softmax_max/sum and output."""
    q, k, v = qkv(b=1, n=4, n_kv=2, sq=8, skv=8, seed=20, requires_grad=True)  # 4 chunks of 2
    scale = 0.5
    ref_out = ref_attention(q, k, v, torch.ones(8, 8, dtype=torch.bool).tril(), scale)[0]
    dy = randn(*ref_out.shape, seed=21)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dy)
    sq, sk, sv, sdy = (to_layout(t.detach(), "SBH") for t in (q, k, v, dy))
    compressed = torch.ones(2048, 2048, dtype=torch.bool).triu(diagonal=1)
    chunks = {r: torch.cat([torch.arange(2 * c, 2 * c + 2) for c in (r, 3 - r)]) for r in (0, 1)}

    def block(r, t):
        """(query rows, key rows, mask arguments) of rank r against rank t's KV."""
        if t == r:
            qr, kr = chunks[r], chunks[r]
        else:  # an earlier rank's KV: only its first chunk is visible; a later rank's: only to q's 2nd chunk
            qr, kr = (chunks[r], chunks[t][:2]) if t < r else (chunks[r][2:], chunks[t])
        diagonal = t == r
        return qr, kr, dict(atten_mask=compressed if diagonal else None, pre_tockens=len(kr),
                            next_tockens=0 if diagonal else len(kr), sparse_mode=3 if diagonal else 0)

    out, dq, dk, dv = (torch.zeros_like(t) for t in (sq, sq, sk, sv))
    for r in (0, 1):
        qr, kr, masks = block(r, r)
        o, m, s, *_ = ops.npu_fusion_attention(sq[qr], sk[kr], sv[kr], 4, "SBH", scale=scale, **masks)
        qr, kr, masks = block(r, 1 - r)
        cur = ops.npu_fusion_attention(sq[qr], sk[kr], sv[kr], 4, "SBH", scale=scale, **masks)
        rows = slice(None) if len(qr) == 4 else slice(2, None)
        o, m, s = o.clone(), m.clone(), s.clone()
        o[rows], m[:, :, rows], s[:, :, rows] = ops.npu_ring_attention_update(o[rows], m[:, :, rows],
                                                                              s[:, :, rows], *cur[:3])
        out[chunks[r]] = o
        for t in (0, 1):
            qr, kr, masks = block(r, t)
            rows = slice(None) if len(qr) == 4 else slice(2, None)
            grads = ops.npu_fusion_attention_grad(sq[qr], sk[kr], sv[kr], sdy[qr], 4, "SBH", softmax_max=m[:, :, rows],
                                                  softmax_sum=s[:, :, rows], attention_in=o[rows], scale_value=scale,
                                                  **masks)
            dq[qr] += grads[0]
            dk[kr] += grads[1]
            dv[kr] += grads[2]
    torch.testing.assert_close(out, to_layout(ref_out.detach(), "SBH"), **F64)
    for g, r in zip((dq, dk, dv), ref_grads):
        torch.testing.assert_close(g, to_layout(r, "SBH"), **F64)
