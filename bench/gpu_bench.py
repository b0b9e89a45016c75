"""The measurements of bench/gpu_check.sh that train.py does not make: one JSON object on stdout each.

    python bench/gpu_bench.py matmul [--n 8192]          # the measured bf16 matmul peak (TFLOP/s)
    python bench/gpu_bench.py profile OVERRIDES...       # one profiled mixexp step: the share of each part
    python bench/gpu_bench.py hf OVERRIDES...            # HF MixtralForCausalLM on the same tokens: s/step

OVERRIDES are train.py's (model=..., hardware=..., train.*). The device is the config's
(hardware.device: cuda on the GPU, cpu in the self-test). `profile` builds one rank in this process
with megatron's own initialization on the device (timing does not depend on the weights; the
layout-independent init is train.py's job), runs --warmup steps, then profiles one step and sorts
every op's self time on the device into the parts of a Mixtral layer by op name and tensor shape:

  attention          SDPA / flash kernels, and GEMMs with the QKV width ((heads + 2 kv groups) x head dim)
                     or [hidden x heads*head_dim] (the output projection)
  experts            GEMMs with the expert FFN width (ffn or 2 x ffn) and grouped GEMMs
  router/dispatch    GEMMs with the expert count as a dimension (the router), top-k, sort, gather/scatter,
                     index and permutation ops, all-to-all
  output layer       every op with the vocabulary as a dimension (the GEMMs and the cross entropy)
  optimizer          fused/foreach Adam and multi-tensor kernels
  other              the rest (norms, activations, embedding, copies, casts)

`hf` builds MixtralForCausalLM (SDPA attention, transformers' default experts kernel: grouped_mm in
transformers 5) in bf16 on the device with its own random weights, and trains it on the same
synthetic micro-batches as mixexp's (gradient accumulation, clip_grad_norm_, fused AdamW).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = ("attention", "experts", "router/dispatch", "output layer", "optimizer", "other")
ROUTING_OPS = ("topk", "sort", "gather", "scatter", "index", "masked_select", "masked_scatter", "bincount", "histc",
               "cumsum", "nonzero", "unique", "all_to_all", "permute_tokens", "unpermute")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul(args) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    a = torch.randn(args.n, args.n, device=device, dtype=dtype)
    b = torch.randn(args.n, args.n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"device": str(device), "n": args.n, "dtype": "bf16", "best_s": best, "tflops": 2 * args.n ** 3 / best / 1e12}


def _shape_dims(shapes) -> set[int]:
    dims = set()
    for shape in shapes or []:
        if isinstance(shape, (list, tuple)):
            dims.update(d for d in shape if isinstance(d, int))
    return dims


def classify(name: str, shapes, m) -> str:
    """The part of the model an op with this name and these input shapes belongs to (see the docstring)."""
    key, dims = name.lower(), _shape_dims(shapes)
    head_dim = m.hidden_size // m.num_attention_heads
    qkv = (m.num_attention_heads + 2 * m.num_query_groups) * head_dim
    ffn = m.moe_ffn_hidden_size or m.ffn_hidden_size
    gemm = any(k in key for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"))
    if m.vocab_size in dims or any(k in key for k in ("cross_entropy", "nll_loss", "log_softmax")):
        return "output layer"
    if any(k in key for k in ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "fmha")):
        return "attention"
    if "grouped_mm" in key or (gemm and (ffn in dims or 2 * ffn in dims)):
        return "experts"
    if gemm and qkv in dims:
        return "attention"
    if gemm and m.num_experts in dims:
        return "router/dispatch"
    if gemm and dims >= {m.hidden_size, m.num_attention_heads * head_dim} and len(dims) <= 3:
        return "attention"  # the output projection [tokens, heads*head_dim] x [hidden]
    if any(k in key for k in ROUTING_OPS):
        return "router/dispatch"
    if any(k in key for k in ("adam", "multi_tensor", "_foreach")):
        return "optimizer"
    return "other"


def device_batches(batches, device):
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def init_rank(cfg):
    """One rank in this process on the config's device: its adaptor, a world of one, megatron's parallel state."""
    import torch
    import torch.distributed as dist

    from mixexp import devices
    from mixexp.launch import free_port
    from mixexp.layout import validate

    layout = validate(cfg)
    assert layout.world_size == 1, "one rank: parallel=single"
    device = cfg.hardware.device
    devices.prepare(device, cfg)
    torch.manual_seed(cfg.train.seed)
    dist.init_process_group(cfg.hardware.backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    from megatron.core import parallel_state, tensor_parallel

    devices.finish(device)
    parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.train.seed)
    return layout, devices.torch_device(device)


def profile(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mixexp.model import build_model_chunks
    from rank import FixedBatches, build_trainer, compose, synthetic_batches

    cfg = compose("parallel=single", "data=synthetic", *args.overrides)
    layout, device = init_rank(cfg)
    chunks = build_model_chunks(cfg, layout)
    trainer = build_trainer(cfg, chunks, FixedBatches(device_batches(synthetic_batches(cfg), device)))
    times = []
    for i in range(args.warmup):
        start = time.perf_counter()
        trainer.step(i)
        times.append(time.perf_counter() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        trainer.step(args.warmup)
        sync(device)
        elapsed = time.perf_counter() - start
    field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals = dict.fromkeys(PARTS, 0.0)
    for event in prof.key_averages(group_by_input_shape=True):
        spent = getattr(event, field, None)
        if spent is None and device.type == "cuda":
            spent = event.self_cuda_time_total  # torch before device_time naming
        totals[classify(event.key, event.input_shapes, cfg.model)] += spent or 0.0
    total = sum(totals.values()) or 1.0
    experts = type(chunks[0].decoder.layers[0].mlp.experts).__name__
    return {"device": str(device), "profiled_step_s": elapsed, "warmup_step_s": times, "experts_module": experts,
            "op_time_s": total / 1e6, "share": {k: v / total for k, v in totals.items()}}


def hf(args) -> dict:
    import torch
    from transformers import MixtralForCausalLM

    from rank import compose, synthetic_batches
    from step_vs_hf import hf_config

    cfg = compose("parallel=single", "data=synthetic", *args.overrides)
    device = torch.device(cfg.hardware.device if cfg.hardware.device != "cuda" else "cuda:0")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        model = MixtralForCausalLM(hf_config(cfg)).to(dtype)
    model.train()
    o = cfg.optim
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps, fused=True)
    batches = device_batches(synthetic_batches(cfg), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            out = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"],
                        shift_labels=batch["labels"])
            (out.loss / len(batches)).backward()
            total += (out.loss - model.router_aux_loss_coef * out.aux_loss).item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        optimizer.step()
        sync(device)
        return total / len(batches)

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        losses.append(step())
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    import transformers

    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    return {"device": str(device), "transformers": transformers.__version__, "dtype": str(dtype),
            "experts_implementation": getattr(model.config, "_experts_implementation", None),
            "attn_implementation": model.config._attn_implementation, "step_s": statistics.median(times),
            "steps": len(times), "first_loss": losses[0], "final_loss": losses[-1], "peak_memory_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("matmul")
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=20)
    for name in ("profile", "hf"):
        p = sub.add_parser(name)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--steps", type=int, default=6, help="timed steps (hf)")
        p.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    result = {"matmul": matmul, "profile": profile, "hf": hf}[args.what](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
