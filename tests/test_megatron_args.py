"""mixexp.megatron_args: the Megatron-LM/MindSpeed flags of a composed config.

Golden tests against MindSpeed-LLM's Mixtral-8x7B script (tests/data, with its source commit),
flag validity against Megatron-LM core_r0.8.0's and MindSpeed's argument parsers (flag lists
extracted into tests/data), and the rules MindSpeed/Megatron enforce, with their exact messages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixexp import megatron_args
from mixexp.layout import LayoutError
from mixexp.megatron_args import compose, io_args, lines, render
from mixexp.npu_config import NpuConfig, npu_config

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SEED = "+experiment=mixtral_8x7b_seed"
MINDSPEED_LLM = "+experiment=mixtral_8x7b_mindspeed_llm"


def _names(path: Path) -> set[str]:
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


MEGATRON_FLAGS = _names(DATA / "megatron_flags_core_r0.8.0.txt")
MINDSPEED_FLAGS = _names(DATA / "mindspeed_flags.txt")
ACCEPTED = MEGATRON_FLAGS | MINDSPEED_FLAGS


def plain(*overrides: str, **model_keys):
    """The composed config as the worker sees it (a plain, open DictConfig), with extra model keys."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose(list(overrides)), resolve=False))
    for key, value in model_keys.items():
        cfg.model[key] = value
    return cfg


def as_dict(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in lines(args):
        flag, _, value = line.partition(" ")
        assert flag not in out, f"{flag} rendered twice"
        out[flag] = value or None
    return out


def script_args() -> dict[str, str | None]:
    out = {}
    for line in (DATA / "mindspeed_llm_2.1.0_mixtral_8x7b_args.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            flag, _, value = line.partition(" ")
            out[flag] = value or None
    return out


def same_value(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


# --- golden: the seed's layout -----------------------------------------------------------------

SEED_GOLDEN = """\
--use-mcore-models
--num-layers 32
--hidden-size 4096
--ffn-hidden-size 14336
--num-attention-heads 32
--group-query-attention
--num-query-groups 8
--max-position-embeddings 32768
--vocab-size 32000
--make-vocab-size-divisible-by 1
--position-embedding-type rope
--rotary-base 1000000
--normalization RMSNorm
--norm-epsilon 1e-05
--swiglu
--untie-embeddings-and-output-weights
--disable-bias-linear
--init-method-std 0.01
--attention-dropout 0.0
--hidden-dropout 0.0
--num-experts 8
--moe-router-topk 2
--moe-router-load-balancing-type aux_loss
--moe-aux-loss-coeff 0.02
--moe-token-dispatcher-type alltoall
--moe-grouped-gemm
--expert-model-parallel-size 1
--tensor-model-parallel-size 8
--pipeline-model-parallel-size 2
--context-parallel-size 4
--sequence-parallel
--use-distributed-optimizer
--overlap-grad-reduce
--overlap-param-gather
--seq-length 32768
--micro-batch-size 1
--global-batch-size 32
--train-iters 2000
--lr 1e-05
--min-lr 1e-06
--lr-decay-style cosine
--lr-decay-iters 1280
--lr-warmup-iters 2
--weight-decay 0.1
--adam-beta1 0.9
--adam-beta2 0.95
--adam-eps 1e-08
--clip-grad 1.0
--seed 1234
--bf16
--no-check-for-nan-in-loss-and-grad
--distributed-backend nccl
--distributed-timeout-minutes 10
--context-parallel-algo megatron_cp_algo
--use-cp-send-recv-overlap
--use-flash-attn
--no-masked-softmax-fusion
--use-fused-rmsnorm
--use-fused-swiglu
--use-fused-rotary-pos-emb
--moe-permutation-async-comm
--use-fused-moe-token-permute-and-unpermute""".splitlines()

# Script flags we do not render, and why.
NOT_RENDERED = {
    "--load": "loading a checkpoint: engine.extra_args",
    "--no-load-optim": "loading a checkpoint: engine.extra_args",
    "--no-load-rng": "loading a checkpoint: engine.extra_args",
    "--no-shared-storage": "MindSpeed-LLM's own flag, in neither Megatron-LM core_r0.8.0 nor MindSpeed",
}
# Script flags we render with another value on purpose.
OTHER_VALUE = {"--eval-interval": "evaluation is off", "--eval-iters": "evaluation is off"}


def test_seed_layout_renders_the_golden_flags():
    assert lines(render(compose([SEED]))) == SEED_GOLDEN


@pytest.mark.parametrize("experiment, pp", [(SEED, "2"), (MINDSPEED_LLM, "1")])
def test_rendering_reproduces_mindspeed_llm_script(experiment, pp):
    """Every flag of MindSpeed-LLM's script, with its value (the seed's only differs in PP=2)."""
    cfg = compose([experiment])
    ours = as_dict(render(cfg) + io_args(cfg, "<DATA_PATH>", save_dir="<CKPT_SAVE_DIR>"))
    script = script_args()
    script["--pipeline-model-parallel-size"] = pp
    assert set(NOT_RENDERED) <= set(script)
    for flag, value in script.items():
        if flag in NOT_RENDERED:
            assert flag not in ours
            continue
        assert flag in ours, f"{flag} of the script is not rendered"
        if flag in OTHER_VALUE or (value or "").startswith("<"):
            continue
        assert same_value(ours[flag], value), f"{flag}: rendered {ours[flag]}, script {value}"
    assert ours["--tokenizer-model"].endswith("tokenizer.model.v1")  # the Mixtral tokenizer file
    # What we add beyond the script: the config's own values made explicit.
    extra = set(ours) - set(script)
    assert extra == {"--norm-epsilon", "--adam-beta1", "--adam-beta2", "--adam-eps", "--seed",
                     "--distributed-timeout-minutes", "--log-throughput"}


def test_mindspeed_llm_layout_differs_from_the_seed_only_in_pipeline_stages():
    seed, msllm = as_dict(render(compose([SEED]))), as_dict(render(compose([MINDSPEED_LLM])))
    assert {k for k in seed if seed[k] != msllm.get(k)} == {"--pipeline-model-parallel-size"}
    assert msllm["--pipeline-model-parallel-size"] == "1" and set(seed) == set(msllm)


def test_the_issue_command_yields_the_scripts_model_layout_and_npu_flags():
    """Without the experiment's schedule: model, layout and fused-op flags as the script has them;
    batch and schedule follow train.* and optim.* (the defaults here), precision the accelerator's default."""
    ours = as_dict(render(compose(["model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b",
                                   "cluster.nnodes=8"])))
    script = script_args()
    script["--pipeline-model-parallel-size"] = "2"
    schedule = {"--seq-length", "--micro-batch-size", "--global-batch-size", "--train-iters", "--lr", "--min-lr",
                "--lr-decay-iters", "--lr-warmup-iters"}
    io = {"--tokenizer-type", "--tokenizer-model", "--save", "--data-path", "--split", "--log-interval",
          "--save-interval", "--eval-interval", "--eval-iters"}
    for flag, value in script.items():
        if flag in NOT_RENDERED or flag in schedule or flag in io:
            continue
        assert flag in ours and same_value(ours[flag], value), flag
    assert (ours["--seq-length"], ours["--global-batch-size"], ours["--lr"]) == ("128", "8", "0.0003")
    # The accelerator defaults: bf16, the distributed optimizer (dp*cp = 4 shards), Megatron's 10-minute
    # timeout; grouped GEMM and param-gather overlap follow bf16 and the distributed optimizer, as in the script.
    assert {"--bf16", "--moe-grouped-gemm", "--use-distributed-optimizer", "--overlap-param-gather"} <= set(ours)
    assert ours["--distributed-timeout-minutes"] == "10"


# --- every flag is one Megatron-LM core_r0.8.0 or MindSpeed accepts -----------------------------

def test_whitelists_name_their_source_commit():
    assert "commit baf94af3c667248865f23df73b9fb8e2395e6fd0" in (DATA / "megatron_flags_core_r0.8.0.txt").read_text()
    assert "commit 077c41370332460fbf749ea94fe1a994f367f4bf" in (DATA / "mindspeed_flags.txt").read_text()
    assert len(MEGATRON_FLAGS) == 326 and len(MINDSPEED_FLAGS) == 177
    assert "--no-shared-storage" not in ACCEPTED  # why the script's flag is left out


def test_every_flag_literal_in_the_module_is_accepted():
    """Static: each '--flag' string megatron_args can emit is in one of the two parsers."""
    source = Path(megatron_args.__file__).read_text()
    literals = {node.value for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.startswith("--") and len(node.value) > 2 and " " not in node.value}
    literals.discard("--help")  # the CLI's own
    assert len(literals) > 70
    assert sorted(literals - ACCEPTED) == []


ALL_ON = NpuConfig(moe_alltoall_overlap_comm=True, moe_tp_extend_ep=True, reuse_fp32_param=True,
                   swap_attention=True, masked_softmax_fusion=False, check_for_nan_in_loss_and_grad=False)

RENDER_CASES = [
    ([SEED], None),
    ([MINDSPEED_LLM], None),
    ([SEED], ALL_ON),
    ([SEED, "parallel.cp_algo=ulysses_cp_algo"], None),
    ([SEED, "parallel.cp_algo=hybrid_cp_algo"], NpuConfig(ulysses_degree_in_cp=2)),
    ([SEED, "train.recompute=full", "parallel.pp=4", "parallel.vpp=2", "parallel.cp=1", "cluster.nnodes=4"],
     NpuConfig(optimization_level=1, use_fused_rmsnorm=False, moe_grouped_gemm=False,
               moe_permutation_async_comm=False, use_flash_attn=False, masked_softmax_fusion=True)),
    ([SEED, "parallel.cp=1", "cluster.nnodes=2"],
     NpuConfig(optimization_level=0, use_fused_rmsnorm=False, use_fused_swiglu=False, use_fused_rotary_pos_emb=False,
               use_fused_moe_token_permute_and_unpermute=False, moe_grouped_gemm=False,
               moe_permutation_async_comm=False, check_for_nan_in_loss_and_grad=True)),
    ([], None),  # CPU defaults
    (["parallel=tp2_ep2", "train.recompute=selective", "hardware=nvidia_h100", "train.precision=bf16"], None),
    (["model=mixtral_8x22b", "parallel=tp2_pp8_ep8_vpp7", "hardware=nvidia_h100", "cluster.nnodes=16",
      "train.global_batch_size=128", "parallel.etp=null"], None),
]


@pytest.mark.parametrize("overrides, npu", RENDER_CASES)
def test_every_rendered_flag_is_accepted(overrides, npu):
    cfg = compose(overrides)
    args = render(cfg, npu) + io_args(cfg, "/data/x_text_document", save_dir="/ckpt") + io_args(cfg, None)
    flags = [a for a in args if a.startswith("--")]
    assert sorted(set(flags) - ACCEPTED) == []


def test_all_switches_on_render_their_flags():
    ours = as_dict(render(compose([SEED]), ALL_ON))
    for flag in ("--moe-alltoall-overlap-comm", "--moe-tp-extend-ep", "--reuse-fp32-param", "--swap-attention"):
        assert flag in ours and ours[flag] is None
    assert "--optimization-level" not in ours  # 2 is MindSpeed's default


def test_lower_optimization_level_and_recompute_and_vpp_flags():
    cfg = compose(RENDER_CASES[5][0])
    ours = as_dict(render(cfg, RENDER_CASES[5][1]))
    assert ours["--optimization-level"] == "1"
    assert ours["--num-layers-per-virtual-pipeline-stage"] == "4"  # 32 layers / (pp 4 * vpp 2)
    assert (ours["--recompute-granularity"], ours["--recompute-method"], ours["--recompute-num-layers"]) == \
        ("full", "uniform", "1")
    assert "--use-flash-attn" not in ours and "--no-masked-softmax-fusion" not in ours


def test_gpu_rendering_has_no_mindspeed_flags():
    ours = as_dict(render(compose(RENDER_CASES[8][0])))
    assert not set(ours) & (MINDSPEED_FLAGS - MEGATRON_FLAGS)
    assert ours["--distributed-backend"] == "nccl" and ours["--recompute-granularity"] == "selective"
    assert ours["--moe-grouped-gemm"] is None and ours["--expert-model-parallel-size"] == "2"
    cpu = as_dict(render(compose([])))
    assert cpu["--distributed-backend"] == "gloo" and "--moe-grouped-gemm" not in cpu  # fp32: no grouped GEMM


def test_context_parallel_algorithms_render():
    ulysses = as_dict(render(compose(RENDER_CASES[3][0])))
    assert ulysses["--context-parallel-algo"] == "ulysses_cp_algo"
    assert "--use-cp-send-recv-overlap" not in ulysses  # a ring-attention option
    hybrid = as_dict(render(compose(RENDER_CASES[4][0]), RENDER_CASES[4][1]))
    assert (hybrid["--context-parallel-algo"], hybrid["--ulysses-degree-in-cp"]) == ("hybrid_cp_algo", "2")
    assert "--use-cp-send-recv-overlap" in hybrid
    no_cp = as_dict(render(compose([SEED, "parallel.cp=1", "cluster.nnodes=2"])))
    assert "--context-parallel-algo" not in no_cp and no_cp["--context-parallel-size"] == "1"


def test_io_args():
    cfg = compose([SEED])
    assert io_args(cfg, None) == ["--mock-data", "--tokenizer-type", "NullTokenizer", "--log-interval", "1",
                                  "--log-throughput", "--eval-iters", "0", "--eval-interval", "2000"]
    args = io_args(cfg, "/d/alpaca_text_document", save_dir="/ckpt")
    assert args[:4] == ["--data-path", "/d/alpaca_text_document", "--split", "99990,8,2"]
    assert args[4:7] == ["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model"]
    assert args[7].endswith("tokenizer.model.v1")
    assert args[8:12] == ["--save", "/ckpt", "--save-interval", "2000"]
    hf = plain(SEED, "data.tokenizer=hf")
    with pytest.raises(LayoutError) as e:
        io_args(hf, "/d/x")
    assert str(e.value) == "data.tokenizer=hf needs data.tokenizer_path (a tokenizer.json or its directory)"
    hf.data.tokenizer_path = "/tok"
    assert io_args(hf, "/d/x")[4:8] == ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "/tok"]


# --- the rules, with their messages ---------------------------------------------------------------

RULES = [
    # (overrides, model keys, NpuConfig kwargs, message)
    ([SEED], {"normalization": "LayerNorm"}, {},
     "npu.use_fused_rmsnorm=true needs RMSNorm (model.normalization=LayerNorm): set npu.use_fused_rmsnorm=false"),
    ([SEED], {"activation": "gelu"}, {},
     "npu.use_fused_swiglu=true needs SwiGLU (model.activation=gelu): set npu.use_fused_swiglu=false"),
    ([SEED], {"position_embedding_type": "learned_absolute"}, {},
     "npu.use_fused_rotary_pos_emb=true needs rotary embeddings (model.position_embedding_type=learned_absolute): "
     "set npu.use_fused_rotary_pos_emb=false"),
    ([SEED], {}, {"use_flash_attn": False},
     "parallel.cp=4 on NPU runs on flash attention (MindSpeed forces it): drop npu.use_flash_attn=false"),
    # Ulysses splits heads over cp*tp; the ring (megatron_cp_algo) does not.
    ([SEED, "parallel.cp_algo=ulysses_cp_algo", "parallel.pp=1", "parallel.cp=8"], {}, {},
     "parallel.cp*parallel.tp=64 does not divide model.num_attention_heads=32"),
    ([SEED, "parallel.cp_algo=ulysses_cp_algo", "train.seq_length=32766"], {}, {},
     "parallel.cp=4 does not divide train.seq_length=32766"),
    ([SEED, "train.seq_length=32772"], {}, {},
     "2*parallel.cp=8 does not divide train.seq_length=32772"),
    ([SEED, "parallel.cp_algo=hybrid_cp_algo"], {}, {},
     "parallel.cp_algo=hybrid_cp_algo needs npu.ulysses_degree_in_cp (a divisor of parallel.cp=4 smaller than it)"),
    ([SEED, "parallel.cp_algo=hybrid_cp_algo"], {}, {"ulysses_degree_in_cp": 4},
     "npu.ulysses_degree_in_cp=4 must divide parallel.cp=4 and leave a ring degree of at least 2"),
    ([SEED, "parallel.cp_algo=hybrid_cp_algo", "parallel.pp=1", "parallel.cp=8", "model.num_attention_heads=16"],
     {}, {"ulysses_degree_in_cp": 4},
     "npu.ulysses_degree_in_cp*parallel.tp=4*8=32 does not divide model.num_attention_heads=16"),
    ([SEED], {}, {"ulysses_degree_in_cp": 2},
     "npu.ulysses_degree_in_cp=2 applies only to parallel.cp_algo=hybrid_cp_algo with parallel.cp > 1 "
     "(got parallel.cp_algo=megatron_cp_algo, parallel.cp=4)"),
    ([SEED], {}, {"moe_alltoall_overlap_comm": True},
     "npu.moe_alltoall_overlap_comm=true with parallel.tp=8 needs npu.moe_tp_extend_ep=true"),
    ([SEED, "parallel.dispatcher=allgather"], {}, {"moe_alltoall_overlap_comm": True},
     "npu.moe_alltoall_overlap_comm=true needs parallel.dispatcher=alltoall (got parallel.dispatcher=allgather)"),
    ([SEED], {}, {"moe_alltoall_overlap_comm": True, "moe_permutation_async_comm": False},
     "npu.moe_alltoall_overlap_comm=true needs npu.moe_permutation_async_comm=true"),
    ([SEED], {}, {"moe_alltoall_overlap_comm": True, "moe_grouped_gemm": False},
     "npu.moe_alltoall_overlap_comm=true needs grouped GEMM (npu.moe_grouped_gemm=true)"),
    ([SEED, "model.num_experts=4"], {}, {"moe_tp_extend_ep": True},
     "npu.moe_tp_extend_ep=true needs model.num_experts % (parallel.tp*parallel.ep) == 0 (got 4 % (8*1))"),
    ([SEED], {}, {"moe_tp_extend_ep": True, "moe_grouped_gemm": False},
     "npu.moe_tp_extend_ep=true needs npu.moe_permutation_async_comm=true and grouped GEMM "
     "(npu.moe_grouped_gemm=true)"),
    # Megatron's grouped_gemm package (GPU, engine=megatron_lm); MindSpeed's npu_gmm takes fp32.
    (["model=mixtral_tiny", "hardware=nvidia_h100", "train.precision=fp32", "train.global_batch_size=16"], {},
     {"moe_grouped_gemm": True},
     "npu.moe_grouped_gemm=true needs train.precision=bf16 (Megatron's grouped GEMM is bf16 only; "
     "got train.precision=fp32)"),
    ([SEED, "parallel.distributed_optimizer=false"], {}, {"overlap_param_gather": True},
     "npu.overlap_param_gather=true needs parallel.distributed_optimizer=true"),
    ([SEED], {}, {"overlap_grad_reduce": False, "overlap_param_gather": True},
     "npu.overlap_param_gather=true needs npu.overlap_grad_reduce=true"),
    ([SEED, "train.precision=fp32"], {}, {"reuse_fp32_param": True},
     "npu.reuse_fp32_param=true needs train.precision=bf16 (got train.precision=fp32)"),
    ([SEED], {}, {"use_ascend_mc2": True},
     "npu.use_ascend_mc2=true does not support MoE models (model.num_experts=8)"),
    ([SEED], {}, {"optimization_level": 1},
     "npu.optimization_level=1 does not patch in npu.use_fused_rmsnorm, npu.moe_grouped_gemm, "
     "npu.moe_permutation_async_comm, parallel.cp=4: raise npu.optimization_level or turn them off"),
    ([SEED, "parallel.cp=1", "cluster.nnodes=2"], {}, {"optimization_level": 0, "use_fused_rmsnorm": False,
                                                      "moe_grouped_gemm": False, "moe_permutation_async_comm": False},
     "npu.optimization_level=0 does not patch in npu.use_fused_swiglu, npu.use_fused_rotary_pos_emb, "
     "npu.use_fused_moe_token_permute_and_unpermute: raise npu.optimization_level or turn them off"),
    ([SEED], {}, {"optimization_level": 3}, "npu.optimization_level=3 must be 0, 1 or 2"),
    (["parallel=tp2", "parallel.etp=1"], {}, {},
     "parallel.etp=1 differs from parallel.tp=2: Megatron-LM core_r0.8.0 has no --expert-tensor-parallel-size; "
     "drop parallel.etp (or use npu.moe_tp_extend_ep=true on NPU)"),
    (["model.moe_ffn_hidden_size=512"], {}, {},
     "model.moe_ffn_hidden_size=512 differs from model.ffn_hidden_size=256: Megatron-LM core_r0.8.0 has no "
     "--moe-ffn-hidden-size"),
]


@pytest.mark.parametrize("overrides, model_keys, npu, message", RULES, ids=[r[3][:60] for r in RULES])
def test_rule_message(overrides, model_keys, npu, message):
    with pytest.raises(LayoutError) as e:
        render(plain(*overrides, **model_keys), NpuConfig(**npu))
    assert str(e.value) == message


def test_the_valid_counterparts_render():
    """The same layouts pass once the rule is met: ulysses with tp*cp dividing the heads, the ring
    with tp8 cp8, hybrid with a ring of 2, alltoall overlap with tp-extend-ep."""
    render(plain(SEED, "parallel.cp_algo=ulysses_cp_algo"))
    render(plain(SEED, "parallel.pp=1", "parallel.cp=8"))  # megatron_cp_algo: heads are not split
    render(plain(SEED, "parallel.cp_algo=hybrid_cp_algo"), NpuConfig(ulysses_degree_in_cp=2))
    render(plain(SEED), NpuConfig(moe_alltoall_overlap_comm=True, moe_tp_extend_ep=True))
    # Off NPU the MindSpeed switches do not apply, so they cannot fail.
    render(plain(SEED, "hardware=nvidia_h100", "parallel.cp_algo=megatron_cp_algo"),
           NpuConfig(optimization_level=0, use_flash_attn=False, use_ascend_mc2=True))


def test_npu_config_reads_the_npu_node():
    cfg = plain(SEED)
    assert npu_config(cfg) == NpuConfig()
    cfg.npu = {"use_fused_rmsnorm": False, "optimization_level": 1}
    assert npu_config(cfg) == NpuConfig(use_fused_rmsnorm=False, optimization_level=1)
    cfg.npu.use_fused_rmsnorm = True
    with pytest.raises(LayoutError) as e:
        render(cfg)
    assert str(e.value).startswith("npu.optimization_level=1 does not patch in npu.use_fused_rmsnorm,")
    cfg.npu = {"use_fused_rmsnrom": True}
    with pytest.raises(ValueError) as e:
        npu_config(cfg)
    assert str(e.value).startswith("npu.use_fused_rmsnrom is not a known switch (known: optimization_level, ")


# --- the command line -------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    code = ("import runpy, sys\n"
            f"sys.argv = ['megatron_args', *{list(args)!r}]\n"
            "try:\n    runpy.run_module('mixexp.megatron_args', run_name='__main__')\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "heavy = sorted(m for m in ('torch', 'megatron', 'megatron.core') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n"
            "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_cli_prints_one_flag_per_line_without_importing_torch():
    out = _cli("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8")
    assert out.returncode == 0, out.stderr
    printed = out.stdout.splitlines()
    assert printed[:3] == ["--use-mcore-models", "--num-layers 32", "--hidden-size 4096"]
    assert "--pipeline-model-parallel-size 2" in printed and "--context-parallel-algo megatron_cp_algo" in printed
    assert "HEAVY []" in out.stderr


def test_cli_errors_are_one_line_with_exit_code_2():
    out = _cli("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8",
               "train.seq_length=4100")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines()[0] == "error: 2*parallel.cp=8 does not divide train.seq_length=4100"
    out = _cli("parallel=nope")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "nope" in out.stderr.splitlines()[0]
