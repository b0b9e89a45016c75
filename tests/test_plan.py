"""The layout planner: enumeration, exclusions, exact parameters, memory, time model, JSON, emitted sweeps."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixexp.flops import flops_per_token
from mixexp.layout import Layout, validate
from mixexp.memory import GIB, estimate_memory
from mixexp.plan import Node, layout_name, plain, run_plan, search, single, top
from mixexp.timing import predict_step

REPO = Path(__file__).resolve().parents[1]
# mixtral_tiny (4 layers, 8 heads, 4 KV groups, 8 experts, ffn 256) on 4 CPU processes.
TINY = ["model=mixtral_tiny", "hardware=cpu", "cluster.devices_per_node=4", "train.seq_length=128",
        "train.global_batch_size=4", "train.precision=fp32", "plan.max_micro_batch_size=2",
        "plan.recompute=[none,full]"]


def compose_plan(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("plan", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny():
    cfg = compose_plan(*TINY)
    settings = Node.wrap(OmegaConf.to_container(cfg.plan))
    return cfg, search(plain(cfg), settings)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def independent_valid_layouts(world=4, layers=4, heads=8, groups=4, ffn=256, experts=8, seq=128, gbs=4, mbs_max=2):
    """The valid (tp, pp, cp, ep, etp, vpp, mbs) for TINY, from the rules written out here once more."""
    valid = set()
    for tp, pp, cp, ep, etp, vpp, mbs in itertools.product(divisors(world), divisors(world), divisors(world),
                                                           divisors(world), divisors(world), divisors(layers),
                                                           range(1, mbs_max + 1)):
        if world % (tp * pp * cp):
            continue
        dp = world // (tp * pp * cp)
        ok = (heads % tp == 0 and groups % tp == 0 and ffn % tp == 0 and pp <= layers
              and (vpp == 1 or pp > 1) and layers % (pp * vpp) == 0 and experts % ep == 0 and ffn % etp == 0
              and (tp * cp * dp) % (ep * etp) == 0 and (cp == 1 or seq % (2 * cp) == 0)
              and (tp == 1 or seq % (tp * cp) == 0) and gbs % (mbs * dp) == 0
              and (vpp == 1 or (gbs // (mbs * dp)) % pp == 0))
        if ok:
            valid.add((tp, pp, cp, ep, etp, vpp, mbs))
    return valid


def test_enumeration_matches_an_independent_count(tiny):
    _, result = tiny
    expected = independent_valid_layouts()
    got = {(ev.layout.tp, ev.layout.pp, ev.layout.cp, ev.layout.ep, ev.layout.etp, ev.layout.vpp,
            ev.cfg.train.micro_batch_size) for ev in result.ranked}
    assert got == expected
    assert len(result.ranked) == 2 * len(expected)  # recompute none and full
    # The search space: tp*pp*cp | 4 (10 triples), ep and etp in 1,2,4, vpp | 4 layers, mbs 1..2, 2 recomputes.
    assert result.candidates == 10 * 3 * 3 * 3 * 2 * 2
    assert result.candidates == len(result.ranked) + sum(count for count, _ in result.excluded.values())


def test_every_exclusion_names_its_rule_and_an_example(tiny):
    _, result = tiny
    rules = set(result.excluded)
    assert "parallel.vpp=… needs parallel.pp > 1 (got parallel.pp=…)" in rules
    assert "parallel.pp*parallel.vpp=… does not divide model.num_layers=…" in rules
    assert "parallel.ep*etp=… does not divide tp*cp*dp=…" in rules
    assert "train.micro_batch_size*dp=… does not divide train.global_batch_size=…" in rules
    for rule, (count, example) in result.excluded.items():
        assert count > 0 and "…" not in example and example.split("=")[0] == rule.split("=")[0]


def test_ranking_puts_fitting_layouts_first_fastest_first(tiny):
    _, result = tiny
    fits = [ev.fits for ev in result.ranked]
    assert fits == sorted(fits, reverse=True)
    speeds = [float(f"{ev.time.tokens_per_sec_per_device:.3g}") for ev in result.ranked if ev.fits]
    assert speeds == sorted(speeds, reverse=True)
    best = top(result, 5, distinct=True)
    assert len({ev.layout for ev in best}) == len(best) == 5


def test_searched_layouts_agree_with_validate(tiny):
    cfg, result = tiny
    for ev in result.ranked[:50]:
        assert validate(ev.cfg) == ev.layout
        assert ev.cfg.parallel.distributed_optimizer is True  # plan.distributed_optimizer=true


def test_exact_parameters_from_shallow_builds_equal_full_depth_builds():
    """Stage counts of Mixtral-8x7B, composed from 1- and 2-layer meta builds, against full-depth builds."""
    cfg = compose_plan("model=mixtral_8x7b", "hardware=ascend_910b", "cluster.nnodes=8")
    from mixexp.plan import count_params

    layouts = [Layout(tp=8, pp=2, ep=1, etp=8, cp=4, dp=1), Layout(tp=1, pp=4, ep=8, etp=1, cp=1, dp=16, vpp=8),
               Layout(tp=1, pp=1, ep=1, etp=1, cp=1, dp=64)]
    counts = count_params(plain(cfg), layouts)
    # Measured with dryrun.stage_parameter_counts on the full 32-layer model (the third: DESIGN.md's total).
    assert counts[layouts[0]] == [2919497728, 2919501824]
    assert counts[layouts[1]] == [1876230144, 1745158144, 1745158144, 1876234240]
    assert counts[layouts[2]] == [46702792704]


def test_single_layout_is_the_seeds(capsys):
    cfg = compose_plan("model=mixtral_8x7b", "hardware=ascend_910b", "cluster.nnodes=8", "parallel=tp8_pp2_cp4",
                       "train.seq_length=32768", "train.global_batch_size=64", "plan.search=false")
    result = single(plain(cfg))
    (ev,) = result.ranked
    assert ev.layout == Layout(tp=8, pp=2, ep=1, etp=8, cp=4, dp=1, vpp=1)
    assert max(ev.params_by_stage) == 2919501824
    assert ev.cfg.parallel.distributed_optimizer is True  # as composed: the NPU default, dp*cp = 4 shards
    assert 0 < ev.time.mfu < 1 and ev.memory["total_gb"] > ev.memory["weights_gb"] > 0


def test_json_output_and_emitted_sweep_compose(tmp_path):
    out = tmp_path / "plan.json"
    cfg = compose_plan(*TINY, f"plan.output={out}", "plan.emit_sweep=tiny_plan", f"plan.sweep_dir={tmp_path}",
                       "plan.top_n=3")
    assert run_plan(cfg) == 0
    records = json.loads(out.read_text())
    keys = {"layout", "params_per_rank_max", "memory_gb_per_device", "fits", "predicted_step_time_s",
            "predicted_tokens_per_sec_per_device", "predicted_mfu"}
    assert records and all(keys <= set(r) for r in records)
    assert set(records[0]["layout"]) == {"tp", "pp", "ep", "etp", "cp", "dp", "vpp"}
    assert [r["rank"] for r in records] == list(range(1, len(records) + 1))

    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        sweep = compose("train", overrides=["+sweep=tiny_plan", searchpath], return_hydra_config=True)
        options = sweep.hydra.sweeper.params.parallel.split(",")
        assert str(sweep.hydra.mode) == "RunMode.MULTIRUN" and len(options) == 3
        by_name = {r["name"]: r for r in records}
        for option in options:
            job = compose("train", overrides=["+sweep=tiny_plan", searchpath, f"parallel={option}"])
            layout, record = validate(job), by_name[job.parallel.name]
            assert {**layout.as_dict(), "etp": layout.etp} == record["layout"]
            assert job.train.micro_batch_size == record["micro_batch_size"]
            assert job.train.recompute == record["recompute"]
            assert job.model.name == "mixtral_tiny" and job.cluster.devices_per_node == 4


def test_a_layout_name_names_each_degree_once():
    cfg = compose_plan(*TINY, "train.micro_batch_size=1", "train.recompute=full")
    assert layout_name(cfg, Layout(tp=2, ep=2, etp=1)) == "tp2_ep2_etp1_mbs1_full"
    assert layout_name(cfg, Layout(tp=2, pp=2, etp=2)) == "tp2_pp2_mbs1_full"


def test_planner_needs_a_world_size(capsys):
    cfg = compose_plan("hardware=cpu")
    assert run_plan(cfg) == 2
    assert "cluster.devices_per_node" in capsys.readouterr().err


def _hand_config(**train):
    """A model small enough to count by hand: 4 layers, h 64, ffn 128, 4 heads, 2 KV groups, 4 experts top-2."""
    return Node.wrap({
        "model": dict(name="hand", num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_query_groups=2, vocab_size=1000, make_vocab_size_divisible_by=1, num_experts=4,
                      moe_router_topk=2, moe_ffn_hidden_size=None, untie_embeddings=True),
        "parallel": dict(tp=2, pp=2, ep=2, etp=1, cp=1, vpp=1, dp=None, sequence_parallel=None,
                         cp_algo="megatron_cp_algo", dispatcher="alltoall", distributed_optimizer=True),
        "train": {**dict(micro_batch_size=2, seq_length=32, global_batch_size=16, precision="bf16",
                         recompute="none"), **train},
        "hardware": dict(name="hand", device="npu", memory_gb=64, runtime_overhead_gb=1.0, peak_flops_bf16=1e12,
                         compute_efficiency=0.5, intra_node_bandwidth_gbps=100, inter_node_bandwidth_gbps=10,
                         devices_per_node=8),
        "cluster": dict(nnodes=1, devices_per_node=None),
    })


def test_memory_breakdown_by_hand():
    cfg, layout = _hand_config(), Layout(tp=2, pp=2, ep=2, etp=1, cp=1, dp=2)
    mem = estimate_memory(cfg, layout, 1_000_000, stage=0)
    # Experts on a rank: 2 layers x 2 experts x 3*64*128; the rest is dense.
    assert mem["expert_params"] == 2 * 2 * 3 * 64 * 128 == 98304
    assert mem["weights_gb"] * GIB == 2_000_000  # bf16
    assert mem["grads_gb"] * GIB == 4_000_000  # fp32 grad buffer
    # fp32 master + m + v = 12 bytes, dense over dp*cp = 2, experts over tp*cp*dp/(ep*etp) = 2.
    assert mem["optimizer_gb"] * GIB == pytest.approx(12 * 901696 / 2 + 12 * 98304 / 2)
    assert mem["optimizer_gb_replicated"] * GIB == 12_000_000
    # One layer, one micro-batch (64 tokens, SP over tp=2), elements:
    #   attention: 64*(2*64/2 [norm in, qkv in] + 2*64/2 [q, out] + 2*32/2 [k, v]) = 10240
    #   MoE: 64*2*64/2 [norm in, router in] + 64 copies*(64 [fc1 in] + 3*128 [fc1 out, act]) + 64*64 [unpermute]
    per_layer = (10240 + 4096 + 64 * (64 + 384) + 4096) * 2
    assert mem["activation_per_layer_gb"] * GIB == per_layer == 94208
    # 1F1B, stage 0 of 2 with 4 micro-batches: 2 micro-batches of its 2 layers in flight.
    assert mem["layers_in_flight"] == 4 and mem["activations_gb"] * GIB == 4 * per_layer
    moe_buffers = 64 * 2 / 2 * 64 * (2 + 1) * 2  # permuted, alltoall'd, (etp=1) gathered copies, bf16
    assert mem["transient_gb"] * GIB == per_layer + moe_buffers
    assert mem["total_gb"] == pytest.approx((2e6 + 4e6 + 6e6 + 4 * per_layer + per_layer + moe_buffers) / GIB + 1.0)
    # The last stage: one micro-batch in flight; the loss keeps bf16 logits + their fp32 softmax (vocab 1000 / tp 2).
    last = estimate_memory(cfg, layout, 1_000_000, stage=1)
    assert last["layers_in_flight"] == 2 and last["logits_gb"] * GIB == 64 * 500 * (2 + 4)
    assert last["transient_gb"] * GIB == 64 * 500 * (2 + 4) + 500 * 64 * 2  # + the output layer's weight grad
    # Interleaved (vpp 2, one layer per chunk): warm-up 2*(pp-1) + (vpp-1)*pp = 4 chunks, +1 in hand.
    vpp = estimate_memory(cfg, Layout(tp=2, pp=2, ep=2, etp=1, cp=1, dp=2, vpp=2), 1_000_000, stage=0)
    assert vpp["layers_in_flight"] == 5
    # Full recompute keeps only each layer's input (64 tokens x 64 / sp 2, bf16).
    full = estimate_memory(_hand_config(recompute="full"), layout, 1_000_000, stage=0)
    assert full["activations_gb"] * GIB == 4 * 64 * 64 / 2 * 2
    # Without the distributed optimizer every rank keeps all states.
    cfg.parallel.distributed_optimizer = False
    assert estimate_memory(cfg, layout, 1_000_000)["optimizer_gb"] * GIB == 12_000_000


def test_time_model_of_one_device_is_flops_over_rate():
    cfg = _hand_config()
    cfg.parallel.update(tp=1, pp=1, ep=1)
    layout = Layout()
    step = predict_step(cfg, layout, [1_000_000])
    tokens = 16 * 32
    assert step.step_time_s == pytest.approx(tokens * flops_per_token(cfg.model, 32) / (1e12 * 0.5))
    assert step.tp_comm_s == step.ep_comm_s == step.cp_comm_s == step.pp_comm_s == step.bubble_s == 0
    assert step.mfu == pytest.approx(0.5)


def test_time_model_bubble_and_collectives():
    cfg = _hand_config()
    base = predict_step(cfg, Layout(tp=2, pp=2, ep=2, etp=1, dp=2), [1_000_000, 1_000_000])
    interleaved = predict_step(cfg, Layout(tp=2, pp=2, ep=2, etp=1, dp=2, vpp=2), [1_000_000, 1_000_000])
    assert base.microbatches == 4
    assert base.bubble_s == pytest.approx(base.microbatch_s)  # (pp-1)/vpp micro-batches
    assert interleaved.bubble_s == pytest.approx(interleaved.microbatch_s / 2)
    assert base.tp_comm_s > 0 and base.ep_comm_s > 0 and base.pp_comm_s > 0
    full = predict_step(_hand_config(recompute="full"), Layout(tp=2, pp=2, ep=2, etp=1, dp=2), [1_000_000] * 2)
    output_layer = 32 * 6 * 64 * 1000 / (1e12 * 0.5)  # 64 tokens / tp 2 through the 64 x 1000 output layer
    assert full.recompute_s == pytest.approx((full.compute_s - output_layer) / 3)  # the layers' forward again
    assert full.tp_comm_s == pytest.approx(1.5 * base.tp_comm_s)  # the recomputed forward gathers again


def test_emitted_sweeps_go_to_conf_local_which_train_py_searches(tmp_path, monkeypatch):
    """By default into ./conf_local (never the package's sweeps/), where train.py finds them with no extra flag."""
    import subprocess
    import sys

    package_files = sorted(p.relative_to(REPO) for p in (REPO / "sweeps").rglob("*.yaml"))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "mixexp.plan", *TINY, "plan.emit_sweep=mine", "plan.top_n=2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[plan] sweep written: conf_local/sweep/mine.yaml  (run: python train.py +sweep=mine, from this " \
           "directory)" in proc.stdout
    assert sorted(p.relative_to(REPO) for p in (REPO / "sweeps").rglob("*.yaml")) == package_files
    assert sorted(p.name for p in (tmp_path / "conf_local" / "parallel").iterdir()) == ["mine_1.yaml", "mine_2.yaml"]

    monkeypatch.chdir(tmp_path)  # train.yaml's own search path, no override
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        sweep = compose("train", overrides=["+sweep=mine"], return_hydra_config=True)
        assert sweep.hydra.sweeper.params.parallel == "mine_1,mine_2"
        job = compose("train", overrides=["+sweep=mine", "parallel=mine_1"])
    assert validate(job).world_size == 4


def test_a_layout_with_under_5_percent_headroom_is_flagged():
    from mixexp.plan_report import layouts_table

    seed = ["model=mixtral_8x7b", "hardware=ascend_910b", "cluster.nnodes=8", "parallel=tp8_pp2_cp4",
            "train.seq_length=32768", "train.global_batch_size=32", "train.micro_batch_size=1", "plan.search=false"]
    (tight,) = single(plain(compose_plan(*seed, "parallel.distributed_optimizer=false"))).ranked
    (roomy,) = single(plain(compose_plan(*seed))).ranked  # the distributed optimizer over dp*cp = 4
    assert round(tight.memory["total_gb"], 1) == 63.8 and round(roomy.memory["total_gb"], 1) == 39.4
    assert (tight.fits, tight.tight, roomy.tight) == (True, True, False)
    assert tight.record()["tight"] is True
    fits_column = [c for c in layouts_table([tight, roomy], "t").columns if c.header == "fits"][0]
    free = 100 * (1 - tight.memory["total_gb"] / 64)
    assert list(fits_column.cells) == [f"tight ({free:.1f}% free)", "yes"] and f"{free:.1f}" == "0.3"
