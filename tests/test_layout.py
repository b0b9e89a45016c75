"""Every layout rule fails before launch with one line naming the values."""

import pytest

from conftest import compose
from mixexp.layout import Layout, LayoutError, validate

BIG = ("model=mixtral_8x7b", "hardware=ascend_910b", "cluster.nnodes=8", "train.seq_length=32768",
       "train.global_batch_size=64", "train.micro_batch_size=1")

RULES = [
    (("parallel.tp=3",), "parallel.tp=3 does not divide model.num_attention_heads=8"),
    (("parallel.tp=8",), "parallel.tp=8 does not divide model.num_query_groups=4"),
    (("parallel.tp=4", "model.ffn_hidden_size=250"), "parallel.tp=4 does not divide model.ffn_hidden_size=250"),
    (("parallel.tp=2", "parallel.sequence_parallel=false"),
     "parallel.tp=2 with MoE needs sequence parallelism: drop parallel.sequence_parallel=false"),
    (("parallel.pp=8",), "parallel.pp=8 exceeds model.num_layers=4"),
    (("parallel.pp=3",), "parallel.pp*parallel.vpp=3 does not divide model.num_layers=4"),
    (("parallel.vpp=2",), "parallel.vpp=2 needs parallel.pp > 1 (got parallel.pp=1)"),
    (("parallel.pp=2", "parallel.vpp=4"), "parallel.pp*parallel.vpp=8 does not divide model.num_layers=4"),
    (("parallel.ep=3",), "parallel.ep=3 does not divide model.num_experts=8"),
    (("parallel.ep=2", "parallel.dp=1"), "parallel.ep*etp=2*1 does not divide tp*cp*dp=1*1*1=1"),
    (("parallel.tp=2", "parallel.etp=3"), "parallel.etp=3 does not divide the expert ffn size=256"),
    (("parallel.cp=2", "train.seq_length=130"), "2*parallel.cp=4 does not divide train.seq_length=130"),
    (("parallel.cp=2", "parallel.cp_algo=ulysses_cp_algo"),
     "parallel.cp_algo=ulysses_cp_algo runs only on NPU (MindSpeed); use parallel.cp_algo=megatron_cp_algo on hardware=cpu"),
    (("parallel.cp=2", "parallel.cp_algo=bogus"),
     "parallel.cp_algo=bogus must be one of megatron_cp_algo|ulysses_cp_algo|hybrid_cp_algo"),
    (("parallel.tp=4", "model.num_attention_heads=8", "train.seq_length=130"),
     "parallel.tp*parallel.cp=4 does not divide train.seq_length=130"),
    (("parallel.dp=2", "train.global_batch_size=6", "train.micro_batch_size=2"),
     "train.micro_batch_size*dp=4 does not divide train.global_batch_size=6"),
    (("parallel=pp2_vpp2", "train.global_batch_size=6", "train.micro_batch_size=2"),
     "parallel.pp=2 does not divide the number of micro-batches (global_batch/(micro_batch*dp))=3"),
    (("parallel.dispatcher=flex",), "parallel.dispatcher=flex must be one of allgather|alltoall"),
    (("train.precision=fp16",), "train.precision=fp16 must be one of fp32|bf16"),
    (("train.recompute=some",), "train.recompute=some must be one of none|selective|full"),
    (("parallel.tp=0",), "parallel.tp=0 must be at least 1"),
    (("model.moe_router_topk=9",), "model.moe_router_topk=9 must be between 1 and model.num_experts=8"),
    (("cluster.node_rank=1",), "cluster.node_rank=1 must be in [0, cluster.nnodes=1)"),
    # Cluster-sized layouts: the world comes from nodes x devices.
    ((*BIG, "parallel=tp8_pp2_cp4", "parallel.dp=2"),
     "tp*pp*cp*dp=8*2*4*2=128 does not equal the world size 64 (cluster.nnodes=8 x 8 devices); "
     "drop parallel.dp to derive it"),
    ((*BIG, "parallel.tp=3"),
     "world size 64 (cluster.nnodes=8 x 8 devices) is not divisible by tp*pp*cp=3*1*1=3"),
    ((*BIG, "parallel=tp8_cp4", "parallel.cp=8", "train.seq_length=4104"),
     "2*parallel.cp=16 does not divide train.seq_length=4104"),
    ((*BIG, "parallel=tp8_cp4", "parallel.cp_algo=ulysses_cp_algo", "parallel.cp=8"),
     "parallel.cp*parallel.tp=64 does not divide model.num_attention_heads=32"),
    ((*BIG, "parallel=tp1_pp4_ep8_vpp8", "parallel.ep=16"), "parallel.ep=16 does not divide model.num_experts=8"),
]


@pytest.mark.parametrize("overrides, message", RULES, ids=[m[:50] for _, m in RULES])
def test_rule_message(overrides, message):
    with pytest.raises(LayoutError) as err:
        validate(compose(*overrides))
    assert str(err.value) == message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, expected", [
    (("parallel=single",), Layout()),
    (("parallel=tp2",), Layout(tp=2, etp=2)),
    (("parallel=ep2",), Layout(ep=2, dp=2)),  # on CPU dp grows so experts fold over it
    (("parallel=tp2_ep2",), Layout(tp=2, etp=2, ep=2, dp=2)),
    (("parallel=pp2_vpp2",), Layout(pp=2, vpp=2)),
    ((*BIG, "parallel=tp8_pp2_cp4"), Layout(tp=8, etp=8, pp=2, cp=4, dp=1)),
    ((*BIG, "parallel=tp8_cp4"), Layout(tp=8, etp=8, cp=4, dp=2)),
    ((*BIG, "parallel=tp1_pp4_ep8_vpp8"), Layout(pp=4, ep=8, dp=16, vpp=8)),
    ((*BIG, "parallel=tp2_ep8"), Layout(tp=2, etp=1, ep=8, dp=32)),
])
def test_valid_layouts_derive_degrees(overrides, expected):
    layout = validate(compose(*overrides))
    assert layout == expected
    assert layout.world_size == expected.tp * expected.pp * expected.cp * expected.dp


def test_layout_name_and_summary_dict():
    layout = Layout(tp=8, etp=8, pp=2, cp=4)
    assert layout.name == "tp8_pp2_cp4"
    assert layout.as_dict() == {"tp": 8, "pp": 2, "ep": 1, "cp": 4, "dp": 1, "vpp": 1}
    assert Layout(tp=2, etp=1, ep=8, dp=32).name == "tp2_ep8_etp1_dp32"
    assert Layout(tp=2, etp=2, ep=2, dp=2).name == "tp2_ep2_dp2"
