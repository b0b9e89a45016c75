"""megatron-core's GPTModel with Mixtral's MoE layers, built from the model config.

Never a re-implementation: the layers are Megatron's (SelfAttention with
RoPE and GQA, MoELayer with its top-k router, aux loss and token dispatcher,
SwiGLU experts). Only the norm and the core attention are swapped for the
CPU-friendly modules in `mixexp.layers` on devices without Transformer Engine.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from mixexp import flops
from mixexp.experts import GroupedExperts
from mixexp.layers import RMSNorm, SDPACoreAttention
from mixexp.layout import Layout, sequence_parallel


def megatron_degrees(layout: Layout) -> dict:
    """The layout as megatron-core's keyword arguments (process groups and TransformerConfig share them)."""
    return dict(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        context_parallel_size=layout.cp,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=layout.etp,
    )


def init_parallel_state(layout: Layout, **options) -> None:
    """megatron-core's process groups for `layout` (options pass through, e.g. timeouts)."""
    parallel_state.initialize_model_parallel(**megatron_degrees(layout), **options)


def padded_vocab_size(cfg) -> int:
    """The model's vocabulary as Megatron pads it for this config's tp."""
    return flops.padded_vocab_size(cfg.model, cfg.parallel.tp)


def transformer_config(cfg, layout: Layout) -> TransformerConfig:
    m, t, p = cfg.model, cfg.train, cfg.parallel
    bf16 = t.precision == "bf16"
    recompute = {"none": {}, "selective": dict(recompute_granularity="selective"),
                 "full": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)}
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        num_moe_experts=m.num_experts or None,
        moe_router_topk=m.moe_router_topk,
        moe_aux_loss_coeff=m.moe_aux_loss_coeff,
        moe_router_load_balancing_type="aux_loss",
        moe_token_dispatcher_type=p.dispatcher,
        moe_ffn_hidden_size=m.moe_ffn_hidden_size or m.ffn_hidden_size,
        **megatron_degrees(layout),
        sequence_parallel=sequence_parallel(cfg),
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        # Megatron's default: each micro-batch's loss is its token mean, averaged over micro-batches
        # and data-parallel ranks. (Per-token scaling mis-scales the MoE aux-loss gradient under
        # sequence or context parallelism in megatron-core 0.16, so layouts would train differently.)
        calculate_per_token_loss=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        deallocate_pipeline_outputs=True,
        # With pp=2 the previous and next stage are one peer; gloo matches untagged batched
        # sends in posting order, so forward and backward tensors could swap. Ordered P2P is exact.
        batch_p2p_comm=cfg.hardware.backend != "gloo",
        **recompute[t.recompute],
        **(npu_fields(cfg) if cfg.hardware.device == "npu" else {}),
    )


def npu_fields(cfg) -> dict:
    """TransformerConfig fields that Megatron-LM's own config builder derives from its args on NPU.

    MindSpeed merges every Megatron global arg of the same name into each TransformerConfig, but these
    are not args of that name (or not of that type): without them the MLP never calls the (patched)
    fused SwiGLU, the experts never become grouped GEMM, and args.cp_comm_type (a one-item list)
    fails megatron-core's check of one entry per layer."""
    from mixexp.megatron_args import derived_switches
    from mixexp.npu_config import npu_config

    npu = npu_config(cfg)
    return dict(bias_activation_fusion=npu.use_fused_swiglu,
                moe_grouped_gemm=derived_switches(cfg, npu)["moe_grouped_gemm"],
                cp_comm_type="p2p")


def layer_spec(config: TransformerConfig, device: str = "cpu") -> tuple[ModuleSpec, type]:
    """(decoder layer spec, final norm). On CUDA with Transformer Engine installed: Megatron's TE spec.
    Elsewhere: Megatron's local MoE spec with our RMSNorm and SDPA/ring core attention. Experts: on CPU
    our GroupedExperts (torch's grouped_mm); on CUDA megatron's grouped-GEMM experts when the `grouped_gemm`
    package is installed (mixexp.devices.cuda decides), else its SequentialMLP."""
    if device == "npu" and "mindspeed.megatron_adaptor" in sys.modules:
        return npu_layer_spec(config)
    # Without MindSpeed (a dry run or the planner on the meta device) the modules below stand in for an NPU
    # model: the same parameter shapes, counts and memory.
    grouped = False
    if device == "cuda":
        from mixexp.devices import cuda

        options = cuda.spec_options()
        te_spec = cuda.te_layer_spec(config, options)
        if te_spec is not None:
            return te_spec
        grouped = options[1]
    layer = copy.deepcopy(get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=grouped,
                                                   normalization="RMSNorm"))
    sub = layer.submodules
    sub.input_layernorm = RMSNorm
    sub.pre_mlp_layernorm = RMSNorm
    sub.self_attention.submodules.core_attention = SDPACoreAttention
    if device == "cpu" and config.num_moe_experts:
        sub.mlp.submodules.experts = ModuleSpec(module=GroupedExperts)
    sub.sharded_state_dict_keys_map = {}
    return layer, RMSNorm


def npu_layer_spec(config: TransformerConfig) -> tuple[ModuleSpec, type]:
    """Megatron's own local spec, untouched: MindSpeed's adaptor has patched its modules by dotted path
    (the norm class, core attention, the experts, the fused functions), so the patched ones are what
    this builds. Our CPU modules here would silently bypass every MindSpeed switch."""
    layer = get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=config.moe_grouped_gemm,
                                     normalization="RMSNorm")
    return layer, layer.submodules.input_layernorm


def block_spec(config: TransformerConfig, vp_stage: int | None, pp_rank: int | None = None,
               device: str = "cpu") -> TransformerBlockSubmodules:
    layer, final_norm = layer_spec(config, device)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=final_norm)


def build_chunk(cfg, config: TransformerConfig, vp_stage: int | None, pre_process: bool, post_process: bool,
                pp_rank: int | None = None) -> GPTModel:
    return GPTModel(
        config=config,
        transformer_layer_spec=block_spec(config, vp_stage, pp_rank, cfg.hardware.device),
        vocab_size=padded_vocab_size(cfg),
        max_sequence_length=cfg.train.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.model.rotary_base),
        vp_stage=vp_stage,
    )


def build_model_chunks(cfg, layout: Layout, meta: bool = False) -> list[GPTModel]:
    """This rank's model: one GPTModel per virtual pipeline stage (on the meta device: shapes only)."""
    config = transformer_config(cfg, layout)
    if meta:
        config.use_cpu_initialization = True
        config.perform_initialization = False
    chunks = []
    stages = range(layout.vpp) if layout.vpp > 1 else [None]
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunks.append(build_chunk(cfg, config, vp_stage, pre, post))
    return chunks


def count_parameters(chunks) -> int:
    return sum(p.numel() for chunk in chunks for p in chunk.parameters())
