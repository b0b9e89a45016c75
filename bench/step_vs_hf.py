"""Full training steps: mixexp's megatron-core model vs Hugging Face's MixtralForCausalLM.

    .venv/bin/python bench/step_vs_hf.py                  # tiny and cpu_medium, 12 timed steps each
    .venv/bin/python bench/step_vs_hf.py --models tiny --steps 20

Both sides train the same Mixtral config on the same micro-batches (synthetic tokens, the
config's global and micro batch), from the same weights: mixexp builds and initializes its
model as the worker does (world size 1 on gloo, in this process), and the HF model gets a copy
of those weights. A step is forward + backward over every micro-batch, gradient clipping and
the optimizer: mixexp through `mixexp.loop.Trainer` (megatron's schedule, DDP, optimizer, LR
schedule); HF as a user would write it (SDPA attention, transformers' default experts kernel,
gradient accumulation, `clip_grad_norm_`, fused AdamW). The two alternate step by step (the
order flips every step); a pair of steps during which other processes used more than
--max-other-load of the machine's CPU time is measured again (up to 3x the steps). Printed: each
side's median step time and the ratio HF / mixexp (above 1: mixexp is faster), and step-1 LM
losses, which agree when the weight copy is right.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from rank import FixedBatches, build_model, build_trainer, compose, init_single_rank, synthetic_batches

# Model overrides on top of conf/model/mixtral_tiny.yaml.
MODELS = {
    "tiny": [],
    # Twice the width and the sequence (the shape of DESIGN.md's pre-project spike): a few seconds a step.
    "cpu_medium": ["model.hidden_size=256", "model.ffn_hidden_size=512", "train.seq_length=256"],
}


def hf_config(cfg, experts: str | None = None):
    from transformers import MixtralConfig

    m = cfg.model
    return MixtralConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.moe_ffn_hidden_size or m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups, head_dim=m.hidden_size // m.num_attention_heads,
        max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)},
        tie_word_embeddings=not m.untie_embeddings, num_local_experts=m.num_experts,
        num_experts_per_tok=m.moe_router_topk, output_router_logits=True, router_aux_loss_coef=m.moe_aux_loss_coeff,
        router_jitter_noise=0.0, attention_dropout=0.0, use_cache=False, attn_implementation="sdpa",
        **({"experts_implementation": experts} if experts else {}),
    )


def hf_state_dict(cfg, megatron_state: dict) -> dict:
    """Megatron GPTModel weights (one rank, no parallelism) under MixtralForCausalLM's names."""
    import torch

    m = cfg.model
    heads, groups, dim = m.num_attention_heads, m.num_query_groups, m.hidden_size // m.num_attention_heads
    sd = {"model.embed_tokens.weight": megatron_state["embedding.word_embeddings.weight"],
          "model.norm.weight": megatron_state["decoder.final_layernorm.weight"],
          "lm_head.weight": megatron_state["output_layer.weight"]}
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        # Megatron packs QKV per query group: [q heads of the group, k, v] x groups.
        qkv = megatron_state[src + "self_attention.linear_qkv.weight"].view(groups, heads // groups + 2, dim, -1)
        sd[dst + "self_attn.q_proj.weight"] = qkv[:, :-2].reshape(heads * dim, -1)
        sd[dst + "self_attn.k_proj.weight"] = qkv[:, -2].reshape(groups * dim, -1)
        sd[dst + "self_attn.v_proj.weight"] = qkv[:, -1].reshape(groups * dim, -1)
        sd[dst + "self_attn.o_proj.weight"] = megatron_state[src + "self_attention.linear_proj.weight"]
        sd[dst + "input_layernorm.weight"] = megatron_state[src + "input_layernorm.weight"]
        sd[dst + "post_attention_layernorm.weight"] = megatron_state[src + "pre_mlp_layernorm.weight"]
        sd[dst + "mlp.gate.weight"] = megatron_state[src + "mlp.router.weight"]
        # Expert e's linear_fc1 is [gate; up] rows, as HF's gate_up_proj[e]. GroupedExperts stacks them
        # already; megatron's SequentialMLP keeps one module per expert.
        for ours, theirs in (("fc1", "gate_up_proj"), ("fc2", "down_proj")):
            stacked = megatron_state.get(src + f"mlp.experts.{ours}_weight")
            if stacked is None:
                stacked = torch.stack([megatron_state[src + f"mlp.experts.local_experts.{e}.linear_{ours}.weight"]
                                       for e in range(m.num_experts)])
            sd[dst + f"mlp.experts.{theirs}"] = stacked
    return sd


class HFTrainer:
    """What a user writes around MixtralForCausalLM: accumulate micro-batches, clip, AdamW."""

    def __init__(self, cfg, megatron_state: dict, batches: list[dict], experts: str | None = None):
        import torch
        from transformers import MixtralForCausalLM

        self.model = MixtralForCausalLM(hf_config(cfg, experts))
        self.model.load_state_dict(hf_state_dict(cfg, megatron_state), strict=True)
        self.model.train()
        o = cfg.optim
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps, fused=True)
        self.clip = o.clip_grad
        self.batches = batches
        # bf16 as HF's Trainer runs it on CPU (bf16=True): fp32 weights under torch.autocast.
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")

    def step(self) -> float:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in self.batches:
            with self.autocast:
                out = self.model(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                                 labels=batch["labels"], shift_labels=batch["labels"])
            (out.loss / len(self.batches)).backward()
            total += (out.loss - self.model.router_aux_loss_coef * out.aux_loss).item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return total / len(self.batches)


def megatron_state_dict(chunks) -> dict:
    return {k: v.detach().clone() for k, v in chunks[0].state_dict().items() if not k.endswith("_extra_state")
            and v is not None}


def use_sequential_experts() -> None:
    """A/B switch: megatron's SequentialMLP experts, as before mixexp.experts.GroupedExperts."""
    import mixexp.model
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    grouped_spec = mixexp.model.layer_spec

    def layer_spec(config, device="cpu"):
        layer, norm = grouped_spec(config, device)
        local = get_gpt_layer_local_spec(num_experts=config.num_moe_experts)
        layer.submodules.mlp.submodules.experts = local.submodules.mlp.submodules.experts
        return layer, norm

    mixexp.model.layer_spec = layer_spec


class OtherLoad:
    """The share of the machine's CPU time that other processes used since construction (Linux /proc/stat)."""

    def __init__(self):
        self.start, self.own, self.wall = self._busy(), time.process_time(), time.perf_counter()

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        except OSError:
            return 0.0
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def share(self) -> float:
        others = self._busy() - self.start - (time.process_time() - self.own)
        return max(0.0, others) / ((time.perf_counter() - self.wall) * (os.cpu_count() or 1))


def compare(name: str, overrides: list[str], steps: int, warmup: int, hf_experts: str | None,
            profile: bool = False, ab: tuple[str, ...] = (), max_other_load: float = 0.1) -> dict:
    import torch

    cfg = compose("parallel=single", "data=synthetic", *MODELS[name], *overrides)
    layout = init_single_rank(cfg)
    if "sequential-experts" in ab:
        use_sequential_experts()
    batches = synthetic_batches(cfg)
    chunks = build_model(cfg, layout)
    state = megatron_state_dict(chunks)
    mixexp = build_trainer(cfg, chunks, FixedBatches(batches))
    if "unfused-adam" in ab:  # A/B switch: megatron's default torch AdamW loop
        for opt in getattr(mixexp.optimizer, "chained_optimizers", [mixexp.optimizer]):
            for group in opt.optimizer.param_groups:
                group.update(fused=None, foreach=None)
    hf = HFTrainer(cfg, state, batches, hf_experts)
    del state
    t = cfg.train
    experts = type(chunks[0].decoder.layers[0].mlp.experts).__name__
    print(f"[{name}] mixexp experts: {experts}, fused AdamW: {'unfused-adam' not in ab}")
    print(f"[{name}] h{cfg.model.hidden_size} ffn{cfg.model.ffn_hidden_size} layers{cfg.model.num_layers} "
          f"experts{cfg.model.num_experts} top{cfg.model.moe_router_topk} seq{t.seq_length} "
          f"batch {t.global_batch_size} (micro {t.micro_batch_size}); torch threads {torch.get_num_threads()}; "
          f"HF experts: {hf.model.config._experts_implementation}",
          flush=True)
    times = {"mixexp": [], "hf": []}
    first = {}

    def pair(i: int) -> dict:
        out = {}
        for side in (("mixexp", "hf") if i % 2 == 0 else ("hf", "mixexp")):
            start = time.perf_counter()
            loss = mixexp.step(i).loss if side == "mixexp" else hf.step()
            out[side] = time.perf_counter() - start
            first.setdefault(side, loss)
        return out

    load, i, discarded = os.getloadavg()[0], 0, 0
    while len(times["hf"]) < steps:
        others = OtherLoad()
        timed = pair(i)
        i += 1
        if i <= warmup:
            continue
        if others.share() > max_other_load and discarded < 3 * steps:
            discarded += 1  # another process took CPU time during this pair: measure it again
            continue
        for side, elapsed in timed.items():
            times[side].append(elapsed)
    med = {side: statistics.median(v) for side, v in times.items()}
    ratio, ratio_min = med["hf"] / med["mixexp"], min(times["hf"]) / min(times["mixexp"])
    print(f"[{name}] step-1 LM loss: mixexp {first['mixexp']:.5f}  hf {first['hf']:.5f}")
    print(f"[{name}] median over {steps} steps: mixexp {med['mixexp']:.3f} s  hf {med['hf']:.3f} s  "
          f"ratio hf/mixexp {ratio:.2f}x (of the fastest steps {ratio_min:.2f}x); {discarded} step pairs "
          f"measured again (other processes took > {100 * max_other_load:.0f}% of the CPUs); "
          f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    if profile:
        vocab_share(name, cfg, {"mixexp": lambda: mixexp.step(0), "hf": hf.step})
    return {"model": name, "mixexp_s": med["mixexp"], "hf_s": med["hf"], "ratio": ratio, "ratio_min": ratio_min}


def vocab_share(name: str, cfg, steps: dict) -> None:
    """One profiled step per side: the time of GEMMs with the vocabulary as a dimension (the output layer)."""
    from torch.profiler import ProfilerActivity, profile

    vocab = cfg.model.vocab_size
    for side, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        head = sum(e.self_cpu_time_total for e in events
                   if e.key in ("aten::mm", "aten::addmm") and str(vocab) in str(e.input_shapes))
        print(f"[{name}] profiled {side} step {elapsed:.3f} s: output-layer GEMMs (a dimension of {vocab}) "
              f"{100 * head / total:.0f}% of op time")
        print(events.table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=28,
                           max_shapes_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--hf-experts", default=None,
                        help="HF experts_implementation (default: transformers' own default, grouped_mm)")
    parser.add_argument("--profile", action="store_true", help="then profile one step per side")
    parser.add_argument("--ab", nargs="*", default=[], choices=["sequential-experts", "unfused-adam"],
                        help="turn mixexp's CPU changes back off, for before/after figures")
    parser.add_argument("--max-other-load", type=float, default=0.1,
                        help="re-measure step pairs while other processes use more than this share of the CPUs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.micro_batch_size=8")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = [compare(name, args.overrides, args.steps, args.warmup, args.hf_experts, args.profile, tuple(args.ab),
                       args.max_other_load)
               for name in args.models]
    for r in results:
        print(f"RESULT {r['model']}: mixexp {r['mixexp_s']:.3f} s/step, hf {r['hf_s']:.3f} s/step, "
              f"ratio {r['ratio']:.2f}x (fastest steps {r['ratio_min']:.2f}x)")


if __name__ == "__main__":
    main()
