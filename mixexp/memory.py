"""Memory per device, estimated from the layout (a first model; the planner refines it)."""

from __future__ import annotations


def estimate_memory(cfg, layout, params_per_rank: int, stage: int = 0) -> dict:
    bf16 = cfg.train.precision == "bf16"
    weights = params_per_rank * (2 if bf16 else 4)
    grads = params_per_rank * 4  # Megatron DDP reduces in fp32
    optimizer_states = params_per_rank * (12 if bf16 else 8)  # fp32 master (bf16 only) + Adam m, v
    if cfg.parallel.distributed_optimizer:
        optimizer_states /= layout.dp
    m, t = cfg.model, cfg.train
    tokens = t.micro_batch_size * t.seq_length / layout.cp / (layout.tp if layout.tp > 1 else 1)
    layers_here = m.num_layers / layout.pp
    in_flight = min(layout.pp - stage, layout.pp) if layout.pp > 1 else 1
    act_bytes = tokens * m.hidden_size * 34 * layers_here * in_flight * (1 if bf16 else 2)
    total = (weights + grads + optimizer_states + act_bytes) / 2**30
    return {"weights_gb": weights / 2**30, "grads_gb": grads / 2**30, "optimizer_gb": optimizer_states / 2**30,
            "activations_gb": act_bytes / 2**30, "total_gb": total}
