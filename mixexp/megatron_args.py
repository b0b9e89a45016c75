"""A composed config as Megatron-LM (core_r0.8.0) + MindSpeed command-line arguments.

    render(cfg)                       -> ["--num-layers", "32", ..., "--use-fused-rmsnorm", ...]
    io_args(cfg, data_prefix, ...)    -> data, tokenizer, checkpoint and logging arguments
    python -m mixexp.megatron_args model=mixtral_8x7b parallel=tp8_pp2_cp4 hardware=ascend_910b cluster.nnodes=8

Two consumers: the NPU adaptor puts `render(cfg)` into `sys.argv` before
`import mindspeed.megatron_adaptor` (MindSpeed reads its switches from there), and
`engine=megatron_lm` passes them to a team's own `pretrain_gpt.py`. The flags are the
ones of MindSpeed-LLM's Mixtral-8x7B script; every flag is one that Megatron-LM
core_r0.8.0 or MindSpeed accepts (tests/data holds both parsers' flag lists).

The layout is validated first (`mixexp.layout.validate`); the rules MindSpeed and
Megatron-LM would only check after launch (fused RMSNorm needs RMSNorm, the context-
parallel algorithms, MoE overlap prerequisites, ...) raise `LayoutError` with one line.
Pure Python: no torch, so `python -m mixexp.megatron_args` answers at once.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from mixexp.layout import Layout, LayoutError, sequence_parallel, validate
from mixexp.npu_config import NpuConfig, npu_config

MEGATRON_LM_REF = "core_r0.8.0"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# MindSpeed-patched Megatron runs the ring (megatron_cp_algo) and hybrid algorithms' send/recv overlap.
_RING_ALGOS = ("megatron_cp_algo", "hybrid_cp_algo")


def _float(value) -> str:
    return repr(float(value))


def _model_kind(m) -> tuple[str, str, str]:
    """(normalization, activation, position embedding); Mixtral's unless the model config says otherwise."""
    return (m.get("normalization", "RMSNorm"), m.get("activation", "swiglu"),
            m.get("position_embedding_type", "rope"))


def _flag(name: str, on: bool) -> str:
    return f"npu.{name}={'true' if on else 'false'}"


def derived_switches(cfg: Any, npu: NpuConfig) -> dict[str, bool]:
    """The switches whose NpuConfig value is None ("decided by the rest of the config")."""
    bf16 = cfg.train.precision == "bf16"
    moe = cfg.model.num_experts > 0
    # MindSpeed's grouped GEMM (npu_gmm) takes fp32 too; Megatron's grouped_gemm package is bf16 only.
    on_npu = cfg.hardware.device == "npu"
    grouped = npu.moe_grouped_gemm if npu.moe_grouped_gemm is not None else (moe and (bf16 or on_npu))
    param_gather = (npu.overlap_param_gather if npu.overlap_param_gather is not None
                    else bool(cfg.parallel.distributed_optimizer) and npu.overlap_grad_reduce)
    return {"moe_grouped_gemm": grouped, "overlap_param_gather": param_gather}


def check(cfg: Any, layout: Layout, npu: NpuConfig) -> None:
    """The rules Megatron-LM core_r0.8.0 and MindSpeed enforce on these flags; LayoutError on the first broken one."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    on_npu = cfg.hardware.device == "npu"
    bf16 = t.precision == "bf16"
    moe = m.num_experts > 0
    sw = derived_switches(cfg, npu)
    grouped = sw["moe_grouped_gemm"]
    normalization, activation, position = _model_kind(m)

    def fail(message: str) -> None:
        raise LayoutError(message)

    # What Megatron-LM core_r0.8.0 cannot express.
    if layout.etp != layout.tp:
        fail(f"parallel.etp={layout.etp} differs from parallel.tp={layout.tp}: Megatron-LM {MEGATRON_LM_REF} has no "
             f"--expert-tensor-parallel-size; drop parallel.etp (or use npu.moe_tp_extend_ep=true on NPU)")
    expert_ffn = m.get("moe_ffn_hidden_size")
    if moe and expert_ffn not in (None, m.ffn_hidden_size):
        fail(f"model.moe_ffn_hidden_size={expert_ffn} differs from model.ffn_hidden_size={m.ffn_hidden_size}: "
             f"Megatron-LM {MEGATRON_LM_REF} has no --moe-ffn-hidden-size")

    # Megatron's own rules.
    if grouped and not moe:
        fail(f"{_flag('moe_grouped_gemm', True)} needs a MoE model (model.num_experts={m.num_experts})")
    if grouped and not bf16 and not on_npu:
        fail(f"{_flag('moe_grouped_gemm', True)} needs train.precision=bf16 (Megatron's grouped GEMM is bf16 only; "
             f"got train.precision={t.precision})")
    if sw["overlap_param_gather"]:
        if not p.distributed_optimizer:
            fail(f"{_flag('overlap_param_gather', True)} needs parallel.distributed_optimizer=true")
        if not npu.overlap_grad_reduce:
            fail(f"{_flag('overlap_param_gather', True)} needs {_flag('overlap_grad_reduce', True)}")
    if not on_npu:
        return

    # MindSpeed's rules (mindspeed/arguments.py validate_args and the adaptor's patch levels).
    if npu.optimization_level not in (0, 1, 2):
        fail(f"npu.optimization_level={npu.optimization_level} must be 0, 1 or 2")
    if npu.use_fused_rmsnorm and normalization != "RMSNorm":
        fail(f"{_flag('use_fused_rmsnorm', True)} needs RMSNorm (model.normalization={normalization}): "
             f"set {_flag('use_fused_rmsnorm', False)}")
    if npu.use_fused_swiglu and activation != "swiglu":
        fail(f"{_flag('use_fused_swiglu', True)} needs SwiGLU (model.activation={activation}): "
             f"set {_flag('use_fused_swiglu', False)}")
    if npu.use_fused_rotary_pos_emb and position != "rope":
        fail(f"{_flag('use_fused_rotary_pos_emb', True)} needs rotary embeddings (model.position_embedding_type="
             f"{position}): set {_flag('use_fused_rotary_pos_emb', False)}")
    if npu.reuse_fp32_param and not bf16:
        fail(f"{_flag('reuse_fp32_param', True)} needs train.precision=bf16 (got train.precision={t.precision})")

    # Context parallelism.
    if p.cp > 1 and not npu.use_flash_attn:
        fail(f"parallel.cp={p.cp} on NPU runs on flash attention (MindSpeed forces it): "
             f"drop {_flag('use_flash_attn', False)}")
    if npu.ulysses_degree_in_cp is not None and (p.cp == 1 or p.cp_algo != "hybrid_cp_algo"):
        fail(f"npu.ulysses_degree_in_cp={npu.ulysses_degree_in_cp} applies only to parallel.cp_algo=hybrid_cp_algo "
             f"with parallel.cp > 1 (got parallel.cp_algo={p.cp_algo}, parallel.cp={p.cp})")
    if p.cp > 1 and p.cp_algo == "hybrid_cp_algo":
        u = npu.ulysses_degree_in_cp
        if u is None:
            fail(f"parallel.cp_algo=hybrid_cp_algo needs npu.ulysses_degree_in_cp (a divisor of parallel.cp={p.cp} "
                 f"smaller than it)")
        if u < 1 or p.cp % u or p.cp // u < 2:
            fail(f"npu.ulysses_degree_in_cp={u} must divide parallel.cp={p.cp} and leave a ring degree of at least 2")
        if m.num_attention_heads % (u * p.tp):
            fail(f"npu.ulysses_degree_in_cp*parallel.tp={u}*{p.tp}={u * p.tp} does not divide "
                 f"model.num_attention_heads={m.num_attention_heads}")

    # MoE.
    if npu.moe_alltoall_overlap_comm:
        if not moe:
            fail(f"{_flag('moe_alltoall_overlap_comm', True)} needs a MoE model (model.num_experts={m.num_experts})")
        if p.dispatcher != "alltoall":
            fail(f"{_flag('moe_alltoall_overlap_comm', True)} needs parallel.dispatcher=alltoall "
                 f"(got parallel.dispatcher={p.dispatcher})")
        if not npu.moe_permutation_async_comm:
            fail(f"{_flag('moe_alltoall_overlap_comm', True)} needs {_flag('moe_permutation_async_comm', True)}")
        if not grouped:
            fail(f"{_flag('moe_alltoall_overlap_comm', True)} needs grouped GEMM ({_flag('moe_grouped_gemm', True)})")
        if p.tp > 1 and not npu.moe_tp_extend_ep:
            fail(f"{_flag('moe_alltoall_overlap_comm', True)} with parallel.tp={p.tp} needs "
                 f"{_flag('moe_tp_extend_ep', True)}")
    if npu.moe_tp_extend_ep:
        if not moe or m.num_experts % (p.tp * p.ep):
            fail(f"{_flag('moe_tp_extend_ep', True)} needs model.num_experts % (parallel.tp*parallel.ep) == 0 "
                 f"(got {m.num_experts} % ({p.tp}*{p.ep}))")
        if not (npu.moe_permutation_async_comm and grouped):
            fail(f"{_flag('moe_tp_extend_ep', True)} needs {_flag('moe_permutation_async_comm', True)} and grouped "
                 f"GEMM ({_flag('moe_grouped_gemm', True)})")
    if npu.use_ascend_mc2:
        if moe:
            fail(f"{_flag('use_ascend_mc2', True)} does not support MoE models (model.num_experts={m.num_experts})")
        if not (p.tp > 1 and sequence_parallel(cfg)):
            fail(f"{_flag('use_ascend_mc2', True)} needs parallel.tp > 1 with sequence parallelism "
                 f"(got parallel.tp={p.tp})")

    # Which features each patch level of MindSpeed brings in.
    level = npu.optimization_level
    level1 = [name for name, on in (("use_fused_swiglu", npu.use_fused_swiglu),
                                    ("use_fused_rotary_pos_emb", npu.use_fused_rotary_pos_emb),
                                    ("use_fused_moe_token_permute_and_unpermute",
                                     moe and npu.use_fused_moe_token_permute_and_unpermute)) if on]
    level2 = [name for name, on in (("use_fused_rmsnorm", npu.use_fused_rmsnorm),
                                    ("moe_grouped_gemm", grouped),
                                    ("moe_permutation_async_comm", moe and npu.moe_permutation_async_comm),
                                    ("moe_alltoall_overlap_comm", npu.moe_alltoall_overlap_comm),
                                    ("moe_tp_extend_ep", npu.moe_tp_extend_ep)) if on]
    missing = (level1 if level < 1 else []) + (level2 if level < 2 else [])
    missing = [f"npu.{name}" for name in missing] + ([f"parallel.cp={p.cp}"] if level < 2 and p.cp > 1 else [])
    if missing:
        fail(f"npu.optimization_level={level} does not patch in {', '.join(missing)}: raise npu.optimization_level "
             f"or turn them off")


def render(cfg: Any, npu: NpuConfig | None = None) -> list[str]:
    """Megatron-LM + MindSpeed arguments for the model, layout, schedule and device switches of `cfg`."""
    layout = validate(cfg)
    npu = npu if npu is not None else npu_config(cfg)
    check(cfg, layout, npu)
    m, p, t, o = cfg.model, cfg.parallel, cfg.train, cfg.optim
    on_npu = cfg.hardware.device == "npu"
    moe = m.num_experts > 0
    sw = derived_switches(cfg, npu)
    normalization, activation, position = _model_kind(m)
    args: list[str] = []

    def add(flag: str, value=None, when: bool = True) -> None:
        if when:
            args.append(flag)
            if value is not None:
                args.append(str(value))

    # Model (megatron.core GPT with Mixtral's shape).
    add("--use-mcore-models")
    add("--num-layers", m.num_layers)
    add("--hidden-size", m.hidden_size)
    add("--ffn-hidden-size", m.ffn_hidden_size)
    add("--num-attention-heads", m.num_attention_heads)
    gqa = m.num_query_groups != m.num_attention_heads
    add("--group-query-attention", when=gqa)
    add("--num-query-groups", m.num_query_groups, when=gqa)
    add("--max-position-embeddings", m.max_position_embeddings)
    add("--vocab-size", m.vocab_size)
    add("--make-vocab-size-divisible-by", m.make_vocab_size_divisible_by)
    add("--position-embedding-type", position)
    add("--rotary-base", int(m.rotary_base), when=position == "rope")  # an int in core_r0.8.0's parser
    add("--normalization", normalization)
    add("--norm-epsilon", _float(m.norm_epsilon))
    add("--swiglu", when=activation == "swiglu")
    add("--untie-embeddings-and-output-weights", when=m.untie_embeddings)
    add("--disable-bias-linear")
    add("--init-method-std", _float(m.init_method_std))
    add("--attention-dropout", "0.0")
    add("--hidden-dropout", "0.0")

    # Mixture of experts.
    if moe:
        add("--num-experts", m.num_experts)
        add("--moe-router-topk", m.moe_router_topk)
        add("--moe-router-load-balancing-type", "aux_loss")
        add("--moe-aux-loss-coeff", _float(m.moe_aux_loss_coeff))
        add("--moe-token-dispatcher-type", p.dispatcher)
        add("--moe-grouped-gemm", when=sw["moe_grouped_gemm"])
    add("--expert-model-parallel-size", layout.ep)

    # Parallel layout.
    add("--tensor-model-parallel-size", layout.tp)
    add("--pipeline-model-parallel-size", layout.pp)
    add("--num-layers-per-virtual-pipeline-stage", m.num_layers // (layout.pp * layout.vpp), when=layout.vpp > 1)
    add("--context-parallel-size", layout.cp)
    add("--sequence-parallel", when=layout.tp > 1 and sequence_parallel(cfg))
    add("--use-distributed-optimizer", when=bool(p.distributed_optimizer))
    add("--overlap-grad-reduce", when=npu.overlap_grad_reduce)
    add("--overlap-param-gather", when=sw["overlap_param_gather"])

    # Batch, schedule, optimizer, precision.
    add("--seq-length", t.seq_length)
    add("--micro-batch-size", t.micro_batch_size)
    add("--global-batch-size", t.global_batch_size)
    add("--train-iters", t.iters)
    add("--lr", _float(o.lr))
    add("--min-lr", _float(o.min_lr))
    add("--lr-decay-style", o.lr_decay_style)
    add("--lr-decay-iters", o.lr_decay_iters, when=o.lr_decay_iters is not None)
    add("--lr-warmup-iters", o.lr_warmup_iters)
    add("--weight-decay", _float(o.weight_decay))
    add("--adam-beta1", _float(o.adam_beta1))
    add("--adam-beta2", _float(o.adam_beta2))
    add("--adam-eps", _float(o.adam_eps))
    add("--clip-grad", _float(o.clip_grad))
    add("--seed", t.seed)
    if t.recompute == "selective":
        add("--recompute-granularity", "selective")
    elif t.recompute == "full":
        add("--recompute-granularity", "full")
        add("--recompute-method", "uniform")
        add("--recompute-num-layers", 1)
    add("--bf16", when=t.precision == "bf16")
    add("--no-check-for-nan-in-loss-and-grad", when=not npu.check_for_nan_in_loss_and_grad)
    # core_r0.8.0 accepts nccl|gloo; on NPU torch_npu's transfer_to_npu maps nccl to hccl.
    add("--distributed-backend", "gloo" if cfg.hardware.backend == "gloo" else "nccl")
    add("--distributed-timeout-minutes", max(1, math.ceil(t.collective_timeout_s / 60)))

    # MindSpeed (NPU).
    if on_npu:
        add("--context-parallel-algo", p.cp_algo, when=layout.cp > 1)
        add("--ulysses-degree-in-cp", npu.ulysses_degree_in_cp, when=npu.ulysses_degree_in_cp is not None)
        add("--use-cp-send-recv-overlap",
            when=layout.cp > 1 and p.cp_algo in _RING_ALGOS and npu.use_cp_send_recv_overlap)
        add("--use-flash-attn", when=npu.use_flash_attn)
        add("--no-masked-softmax-fusion", when=not npu.masked_softmax_fusion)
        add("--use-fused-rmsnorm", when=npu.use_fused_rmsnorm)
        add("--use-fused-swiglu", when=npu.use_fused_swiglu)
        add("--use-fused-rotary-pos-emb", when=npu.use_fused_rotary_pos_emb)
        if moe:
            add("--moe-permutation-async-comm", when=npu.moe_permutation_async_comm)
            add("--use-fused-moe-token-permute-and-unpermute", when=npu.use_fused_moe_token_permute_and_unpermute)
            add("--moe-alltoall-overlap-comm", when=npu.moe_alltoall_overlap_comm)
            add("--moe-tp-extend-ep", when=npu.moe_tp_extend_ep)
        add("--use-ascend-mc2", when=npu.use_ascend_mc2)
        add("--reuse-fp32-param", when=npu.reuse_fp32_param)
        add("--swap-attention", when=npu.swap_attention)
        add("--optimization-level", npu.optimization_level, when=npu.optimization_level != 2)
    return args


def tokenizer_args(data_cfg: Any) -> list[str]:
    """Megatron's tokenizer for our data config's tokenizer (the Mixtral model is a SentencePiece file)."""
    kind, path = data_cfg.tokenizer, data_cfg.get("tokenizer_path")
    if kind == "hf":
        if not path:
            raise LayoutError("data.tokenizer=hf needs data.tokenizer_path (a tokenizer.json or its directory)")
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(path)]
    if kind == "mixtral" and not path:
        from mixexp.data.tokenizers import TokenizerError, mixtral_model_path

        try:
            path = mixtral_model_path()
        except TokenizerError as exc:
            raise LayoutError(str(exc)) from None
    if not path:
        raise LayoutError(f"data.tokenizer={kind} needs data.tokenizer_path (a SentencePiece .model file)")
    return ["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", str(path)]


def io_args(cfg: Any, data_prefix: str | None, save_dir: str | None = None) -> list[str]:
    """Data, tokenizer, checkpoint and logging arguments of a Megatron-LM run over `data_prefix`.

    `data_prefix` None means synthetic data (Megatron's mock dataset). Evaluation is off
    (`--eval-iters 0`); `--log-throughput` makes the iteration lines carry TFLOP/s.
    """
    t = cfg.train
    args: list[str] = []
    if data_prefix is None:
        args += ["--mock-data", "--tokenizer-type", "NullTokenizer"]
    else:
        args += ["--data-path", str(data_prefix), "--split", str(cfg.data.split)]
        args += tokenizer_args(cfg.data)
    if save_dir is not None:
        args += ["--save", str(save_dir), "--save-interval", str(t.iters)]
    args += ["--log-interval", str(t.log_interval), "--log-throughput",
             "--eval-iters", "0", "--eval-interval", str(t.iters)]
    return args


def lines(args: list[str]) -> list[str]:
    """One flag per line, with its value: ["--num-layers 32", "--swiglu", ...]."""
    out: list[str] = []
    for token in args:
        if token.startswith("--") or not out:
            out.append(token)
        else:
            out[-1] += f" {token}"
    return out


def compose(overrides: list[str]):
    """The root config `train.py` would compose with these Hydra overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import mixexp.config  # noqa: F401  (registers the structured configs)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name="train", overrides=list(overrides))


def main(argv: list[str]) -> int:
    from mixexp.errors import ConfigError

    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m mixexp.megatron_args [hydra overrides...]\n"
              "Prints the Megatron-LM/MindSpeed arguments of the composed config, one flag per line.")
        return 0
    try:
        cfg = compose(argv)
        args = render(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Hydra's override and composition errors
        if type(exc).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        print("\n".join(lines(args)), flush=True)
    except BrokenPipeError:  # `| head`
        sys.stdout = None
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
