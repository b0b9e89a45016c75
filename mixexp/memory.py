"""Memory per device of one pipeline stage: model states, activations, buffers, runtime.

Pure functions of the config, the layout and the exact parameter count of the
stage (from the dry run). Bytes follow what megatron-core allocates:

- weights: one copy in the training precision (2 bytes bf16, 4 fp32);
- gradients: DDP's contiguous buffer, fp32 (Megatron reduces bf16 grads in fp32);
- optimizer: Adam's m and v, plus fp32 master weights when training in bf16;
  the distributed optimizer shards them over the data-parallel ranks
  (dense parameters over dp*cp, experts over the expert-data-parallel group);
- activations: what autograd keeps per layer and micro-batch, derived below
  for Mixtral's GQA attention (flash-style core attention, no score matrix)
  and SwiGLU experts behind the alltoall dispatcher, times the micro-batches a
  1F1B or interleaved schedule keeps in flight on this stage;
- transient: the largest of the working set of a layer in backward (with the
  MoE dispatch buffers), the logits the loss keeps on the last stage with the
  output layer's weight gradient, the embedding's weight gradient;
- runtime: the framework itself (CUDA/NPU context and workspaces; on CPU the
  Python + torch + megatron-core resident set, as measured by ru_maxrss).
"""

from __future__ import annotations

from mixexp.flops import padded_vocab_size

GIB = 2**30
# Per device kind, when the hardware config does not set runtime_overhead_gb. CPU: measured
# (resident set of a worker after importing torch + megatron-core and initializing gloo).
RUNTIME_OVERHEAD_GB = {"cpu": 0.45, "cuda": 2.0, "npu": 3.0}


def _get(node, key, default=None):
    value = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    return default if value is None else value


def sp_degree(cfg, layout) -> int:
    """What sequence parallelism divides activations by: tp when it is on (Megatron's default), else 1."""
    sp = _get(cfg.parallel, "sequence_parallel")
    return layout.tp if sp is None or sp else 1


def bytes_per_element(cfg) -> int:
    return 2 if cfg.train.precision == "bf16" else 4


def layers_per_stage(cfg, layout) -> int:
    return cfg.model.num_layers // layout.pp


def num_microbatches(cfg, layout) -> int:
    return cfg.train.global_batch_size // (cfg.train.micro_batch_size * layout.dp)


def expert_params_per_rank(m, layout) -> int:
    """SwiGLU experts of one stage on one rank: (E/ep) experts of 3*h*f/etp each, per layer."""
    if not m.num_experts:
        return 0
    ffn = _get(m, "moe_ffn_hidden_size") or m.ffn_hidden_size
    return m.num_layers // layout.pp * (m.num_experts // layout.ep) * 3 * m.hidden_size * ffn // layout.etp


def expert_data_parallel(layout) -> int:
    return layout.tp * layout.cp * layout.dp // (layout.ep * layout.etp)


def in_flight(cfg, layout, stage: int) -> tuple[int, int]:
    """(model chunks in flight, layers per chunk) at the peak of the schedule on this stage.

    1F1B: stage i runs pp-i-1 warm-up forwards before its first backward, so it holds
    pp-i micro-batches. Interleaved (vpp>1): Megatron's warm-up on rank i is
    2*(pp-i-1) + (vpp-1)*pp chunk forwards, each chunk L/(pp*vpp) layers.
    """
    layout_layers = layers_per_stage(cfg, layout)
    micro = num_microbatches(cfg, layout)
    if layout.pp == 1:
        return 1, layout_layers
    if layout.vpp == 1:
        return min(layout.pp - stage, micro), layout_layers
    warmup = min(2 * (layout.pp - stage - 1) + (layout.vpp - 1) * layout.pp, micro * layout.vpp)
    return min(warmup + 1, micro * layout.vpp), layout_layers // layout.vpp


def layer_activation_elements(cfg, layout) -> dict:
    """Elements autograd keeps for one transformer layer and one micro-batch on one rank."""
    m, t = cfg.model, cfg.train
    tokens = t.micro_batch_size * t.seq_length / layout.cp
    sp = sp_degree(cfg, layout)
    h, tp = m.hidden_size, layout.tp
    head_dim = h // m.num_attention_heads
    hq = m.num_attention_heads * head_dim
    # Our CPU core attention repeats K/V to every head before SDPA; flash kernels keep GQA's K/V.
    hkv = hq if cfg.hardware.device == "cpu" else m.num_query_groups * head_dim
    # Norm input, QKV input (the sequence-parallel shard; Megatron re-gathers it in backward),
    # Q, K, V and the core-attention output (input of the output projection).
    # Selective recompute (core attention) saves nothing here: with no score matrix kept, what
    # it would free is exactly its inputs Q, K, V, which the recomputation needs.
    attention = tokens * (2 * h / sp + 2 * hq / tp + 2 * hkv / tp)
    if m.num_experts:
        k, etp = m.moe_router_topk, layout.etp
        ffn = _get(m, "moe_ffn_hidden_size") or m.ffn_hidden_size
        copies = tokens * k / sp  # routed token copies per rank (balanced), before the etp all-gather
        # Norm input, router/dispatcher input; per copy: fc1 input (gathered over etp), fc1 output
        # (2f/etp, gate and up), SwiGLU output (f/etp); the expert output kept to weight by the probs.
        mlp = tokens * 2 * h / sp + copies * (etp * h + 3 * ffn) + copies * h
    else:
        mlp = tokens * (2 * h / sp + 3 * m.ffn_hidden_size / tp)
    return {"attention": attention, "mlp": mlp, "layer_input": tokens * h / sp}


def activation_bytes(cfg, layout, stage: int) -> dict:
    """Stored activations at the schedule's peak and the transient working set, in bytes."""
    m, t = cfg.model, cfg.train
    e = bytes_per_element(cfg)
    per_layer = layer_activation_elements(cfg, layout)
    full_layer = (per_layer["attention"] + per_layer["mlp"]) * e
    kept_layer = per_layer["layer_input"] * e if t.recompute == "full" else full_layer
    chunks, layers_per_chunk = in_flight(cfg, layout, stage)
    stored = chunks * layers_per_chunk * kept_layer
    tokens = t.micro_batch_size * t.seq_length / layout.cp
    sp = sp_degree(cfg, layout)
    # MoE dispatch: permuted tokens, the alltoall output and the etp all-gather of them.
    moe_buffers = tokens * m.moe_router_topk / sp * m.hidden_size * (2 + layout.etp) * e if m.num_experts else 0.0
    # Embedding and output layer: their weight gradient is a dense temporary before DDP adds it
    # to the fp32 buffer; the loss keeps the logits (in place, plus an fp32 copy when they are bf16).
    vocab = padded_vocab_size(m, layout.tp) // layout.tp  # padded vocabulary per TP rank
    embedding_grad = vocab * m.hidden_size * e if stage in (0, layout.pp - 1) else 0.0
    logits = tokens * vocab * (e + (4 if e != 4 else 0)) if stage == layout.pp - 1 else 0.0
    # Backward of one layer: its activations (rematerialized first under full recompute) and their gradients.
    working = full_layer + (full_layer if t.recompute == "full" else 0.0) + moe_buffers
    return {"stored": stored, "transient": max(working, logits + embedding_grad),
            "moe_buffers": moe_buffers, "logits": logits, "chunks_in_flight": chunks,
            "layers_in_flight": chunks * layers_per_chunk, "per_layer": full_layer}


def runtime_overhead_gb(hardware) -> float:
    return float(_get(hardware, "runtime_overhead_gb", RUNTIME_OVERHEAD_GB.get(hardware.device, 2.0)))


def estimate_memory(cfg, layout, params_per_rank: int, stage: int = 0) -> dict:
    """Peak memory of a device on pipeline stage `stage` holding `params_per_rank` parameters (GiB)."""
    bf16 = cfg.train.precision == "bf16"
    expert = min(expert_params_per_rank(cfg.model, layout), params_per_rank)
    dense = params_per_rank - expert
    weights = params_per_rank * bytes_per_element(cfg)
    grads = params_per_rank * 4
    state_bytes = 12 if bf16 else 8  # (fp32 master +) Adam m and v
    replicated = params_per_rank * state_bytes
    distributed = dense * state_bytes / (layout.dp * layout.cp) + expert * state_bytes / expert_data_parallel(layout)
    optimizer = distributed if cfg.parallel.distributed_optimizer else replicated
    act = activation_bytes(cfg, layout, stage)
    runtime = runtime_overhead_gb(cfg.hardware)
    total = (weights + grads + optimizer + act["stored"] + act["transient"]) / GIB + runtime
    return {
        "weights_gb": weights / GIB,
        "grads_gb": grads / GIB,
        "optimizer_gb": optimizer / GIB,
        "optimizer_gb_distributed": distributed / GIB,
        "optimizer_gb_replicated": replicated / GIB,
        "activations_gb": act["stored"] / GIB,
        "activation_per_layer_gb": act["per_layer"] / GIB,
        "layers_in_flight": act["layers_in_flight"],
        "transient_gb": act["transient"] / GIB,
        "moe_buffers_gb": act["moe_buffers"] / GIB,
        "logits_gb": act["logits"] / GIB,
        "runtime_gb": runtime,
        "total_gb": total,
        "stage": stage,
        "params": params_per_rank,
        "expert_params": expert,
    }


def peak_memory(cfg, layout, params_by_stage: list[int]) -> dict:
    """The estimate of the stage that needs most: usually stage 0 (most micro-batches in flight), or
    the last (the output layer and its logits)."""
    stages = sorted({0, layout.pp - 1})
    return max((estimate_memory(cfg, layout, params_by_stage[s], stage=s) for s in stages),
               key=lambda mem: mem["total_gb"])
