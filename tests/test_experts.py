"""GroupedExperts is a drop-in for megatron-core's SequentialMLP: same results, same checkpoint layout.

Each case builds both modules for one rank of a layout inside a fake process group (no peers needed:
experts do no communication of their own; the dispatcher does).
"""

import copy

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from megatron.core import parallel_state  # noqa: E402
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection  # noqa: E402
from megatron.core.transformer.spec_utils import build_module  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402

from mixexp.experts import GroupedExperts  # noqa: E402
from mixexp.init_weights import init_layout_independent  # noqa: E402

EXPERTS, HIDDEN, FFN = 8, 64, 128
# (tp, ep, etp, world size, this rank)
LAYOUTS = {"single": (1, 1, 1, 1, 0), "ep2": (1, 2, 1, 2, 1), "tp2_ep2": (2, 2, 2, 4, 3),
           "tp2_ep2_etp1": (2, 2, 1, 4, 2), "tp2_ep4_etp1": (2, 4, 1, 4, 1)}


def build_pair(tp, ep, etp, dtype=torch.float32):
    config = TransformerConfig(num_layers=2, hidden_size=HIDDEN, ffn_hidden_size=FFN, num_attention_heads=4,
                               num_moe_experts=EXPERTS, gated_linear_unit=True, activation_func=F.silu,
                               add_bias_linear=False, tensor_model_parallel_size=tp, expert_model_parallel_size=ep,
                               expert_tensor_parallel_size=etp, sequence_parallel=tp > 1, params_dtype=dtype,
                               bf16=dtype == torch.bfloat16, use_cpu_initialization=True)
    pg = get_default_pg_collection()
    spec = get_gpt_layer_local_spec(num_experts=EXPERTS).submodules.mlp.submodules.experts
    return (build_module(spec, EXPERTS // ep, config, pg_collection=pg),
            GroupedExperts(EXPERTS // ep, config, pg_collection=pg))


@pytest.fixture(params=list(LAYOUTS))
def layout(request):
    tp, ep, etp, world, rank = LAYOUTS[request.param]
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, expert_model_parallel_size=ep,
                                             expert_tensor_parallel_size=etp, create_gloo_process_groups=False)
    yield tp, ep, etp
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def describe(tree) -> dict:
    """Global key -> sorted (shape, offset, fragmentation, replica, local shape) of every shard."""
    out = {}

    def walk(x):
        if isinstance(x, ShardedTensorFactory):
            walk(x.build())
        elif isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, (list, tuple)):
            [walk(v) for v in x]
        elif isinstance(x, ShardedTensor):
            out.setdefault(x.key, []).append((x.global_shape, x.global_offset, x.axis_fragmentations, x.replica_id,
                                              tuple(x.local_shape), x.prepend_axis_num))
        elif isinstance(x, ShardedObject):
            out.setdefault(x.key, []).append((x.global_shape, x.global_offset, x.replica_id))

    walk(tree)
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("singleton", [False, True])
def test_sharded_state_dict_matches_sequential_mlp(layout, singleton):
    sequential, grouped = build_pair(*layout)
    prefix, offsets = "decoder.layers.mlp.experts.", ((0, 1, 2),)  # inside layer 1 of 2, as in a GPTModel
    metadata = {"singleton_local_shards": True} if singleton else None
    want = describe(sequential.sharded_state_dict(prefix, offsets, copy.copy(metadata)))
    got = describe(grouped.sharded_state_dict(prefix, offsets, copy.copy(metadata)))
    assert got == want
    assert (f"{prefix}experts.linear_fc1.weight" in got) != singleton
    assert sum(p.numel() for p in grouped.parameters()) == sum(p.numel() for p in sequential.parameters())


def test_layout_independent_init_gives_each_expert_sequential_mlps_weights(layout):
    sequential, grouped = build_pair(*layout)
    for module in (sequential, grouped):
        init_layout_independent([module], seed=7, std=0.02, num_layers=2)
    for e, expert in enumerate(sequential.local_experts):
        assert torch.equal(grouped.fc1_weight[e], expert.linear_fc1.weight)
        assert torch.equal(grouped.fc2_weight[e], expert.linear_fc2.weight)


@pytest.mark.parametrize("grouped_mm", [True, False], ids=["grouped_mm", "no_grouped_mm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("counts", [[3, 0, 5, 7, 0, 1, 9, 2], [0] * 8, [0, 0, 0, 10, 0, 0, 0, 0]])
def test_forward_and_backward_match_sequential_mlp(dtype, counts, grouped_mm, monkeypatch):
    """Also without F.grouped_mm (the Ascend stack's torch 2.7.1 has none): the per-expert fallback."""
    if not grouped_mm:
        monkeypatch.delattr(F, "grouped_mm", raising=False)
    elif not hasattr(F, "grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no F.grouped_mm")
    dist.init_process_group("fake", rank=0, world_size=1, store=FakeStore())
    parallel_state.initialize_model_parallel(create_gloo_process_groups=False)
    try:
        sequential, grouped = build_pair(1, 1, 1, dtype)
        with torch.no_grad():
            for e, expert in enumerate(sequential.local_experts):
                expert.linear_fc1.weight.copy_(grouped.fc1_weight[e])
                expert.linear_fc2.weight.copy_(grouped.fc2_weight[e])
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randn(sum(counts), HIDDEN, generator=generator).to(dtype)
        probs = torch.rand(sum(counts), generator=generator)
        grad = torch.randn(sum(counts), HIDDEN, generator=generator).to(dtype)
        results = []
        for module in (sequential, grouped):
            x = tokens.clone().requires_grad_()
            out, bias = module(x, torch.tensor(counts), probs)
            out.backward(grad)
            results.append((out, x.grad, bias))
        (want, want_dx, _), (got, got_dx, bias) = results
        assert bias is None and got.dtype == dtype
        assert torch.equal(got, want) and torch.equal(got_dx, want_dx)
        want_fc1 = [e.linear_fc1.weight.grad for e in sequential.local_experts]
        for e, g in enumerate(want_fc1):  # every expert gets a gradient, zero when it had no tokens
            assert torch.equal(grouped.fc1_weight.grad[e], g if g is not None else torch.zeros_like(grouped.fc1_weight[e]))
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def test_factory_round_trip_and_state_dict_load():
    dist.init_process_group("fake", rank=0, world_size=1, store=FakeStore())
    parallel_state.initialize_model_parallel(create_gloo_process_groups=False)
    try:
        _, grouped = build_pair(1, 1, 1)
        sd = grouped.sharded_state_dict("experts.")
        factory = sd["experts.fc1_weight"]
        pieces = factory.build()
        assert all(p.data.data_ptr() >= grouped.fc1_weight.data_ptr() for p in pieces)  # views, not copies
        merged = factory.merge_fn([p.data.clone() for p in pieces])
        assert torch.equal(merged, grouped.fc1_weight.data)
        loaded = {"fc1_weight": merged * 2, "fc2_weight": grouped.fc2_weight.detach().clone(),
                  "local_experts.0.linear_fc1._extra_state": None}
        result = grouped.load_state_dict(loaded)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(grouped.fc1_weight.data, merged * 2)
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
