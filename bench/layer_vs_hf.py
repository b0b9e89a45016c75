"""One decoder layer, forward + backward: mixexp's (megatron-core) against HF's MixtralDecoderLayer.

    .venv/bin/python bench/layer_vs_hf.py                       # tiny, 30 rounds
    .venv/bin/python bench/layer_vs_hf.py --models cpu_medium --ab sequential-experts

Same weights (layer 0 of the models step_vs_hf.py builds), one micro-batch of random activations.
Timed per part: attention (with RoPE), the MoE block (router, dispatch, experts, combine) and the whole
layer (with norms and residuals); the parts alternate, minimum and median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import step_vs_hf as S
from rank import build_model, compose, init_single_rank, synthetic_batches


def parts(cfg, chunks, hf):
    import torch

    mg, hm = chunks[0], hf.model.model
    t = cfg.train
    s, b, h = t.seq_length, t.micro_batch_size, cfg.model.hidden_size
    generator = torch.Generator().manual_seed(0)
    x, dy = torch.randn(s, b, h, generator=generator), torch.randn(s, b, h, generator=generator)
    xh, dyh = x.transpose(0, 1).contiguous(), dy.transpose(0, 1).contiguous()  # HF: [batch, seq, hidden]
    positions = torch.arange(s).unsqueeze(0).expand(b, -1)
    rope = mg.rotary_pos_emb(s)
    ours, theirs = mg.decoder.layers[0], hm.layers[0]

    def fwd_bwd(fn, inp, grad):
        def run():
            fn(inp.detach().requires_grad_()).backward(grad)
        return run

    return {
        "attention": (fwd_bwd(lambda i: ours.self_attention(i, attention_mask=None, rotary_pos_emb=rope)[0], x, dy),
                      fwd_bwd(lambda i: theirs.self_attn(i, position_embeddings=hm.rotary_emb(i, positions),
                                                         attention_mask=None)[0], xh, dyh)),
        "moe": (fwd_bwd(lambda i: ours.mlp(i)[0], x, dy), fwd_bwd(lambda i: theirs.mlp(i), xh, dyh)),
        "layer": (fwd_bwd(lambda i: ours(i, attention_mask=None, rotary_pos_emb=rope)[0], x, dy),
                  fwd_bwd(lambda i: theirs(i, position_embeddings=hm.rotary_emb(i, positions), attention_mask=None),
                          xh, dyh)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=list(S.MODELS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--ab", nargs="*", default=[], choices=["sequential-experts"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for name in args.models:
        cfg = compose("parallel=single", "data=synthetic", *S.MODELS[name], *args.overrides)
        layout = init_single_rank(cfg)
        if "sequential-experts" in args.ab:
            S.use_sequential_experts()
        chunks = build_model(cfg, layout)
        hf = S.HFTrainer(cfg, S.megatron_state_dict(chunks), synthetic_batches(cfg))
        cases = {f"{part} {side}": fn for part, pair in parts(cfg, chunks, hf).items()
                 for side, fn in zip(("mixexp", "hf"), pair)}
        for fn in cases.values():
            fn()
        times = {k: [] for k in cases}
        for r in range(args.rounds):
            for k, fn in (cases.items() if r % 2 == 0 else reversed(cases.items())):
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        experts = type(chunks[0].decoder.layers[0].mlp.experts).__name__
        print(f"[{name}] mixexp experts {experts}; {args.rounds} rounds, forward + backward of one micro-batch")
        for part in ("attention", "moe", "layer"):
            ours, theirs = times[f"{part} mixexp"], times[f"{part} hf"]
            print(f"  {part:9s} mixexp min {min(ours) * 1e3:7.2f} ms (median {statistics.median(ours) * 1e3:7.2f})  "
                  f"hf min {min(theirs) * 1e3:7.2f} ms (median {statistics.median(theirs) * 1e3:7.2f})  "
                  f"hf/mixexp {min(theirs) / min(ours):.2f}x")


if __name__ == "__main__":
    main()
