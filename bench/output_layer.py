"""The output layer and its loss, forward + backward of one micro-batch: three ways to compute them.

    .venv/bin/python bench/output_layer.py                 # tiny and cpu_medium shapes, 20 rounds
    .venv/bin/python bench/output_layer.py --chunk 1024 4096

The output layer (logits = hidden @ W^T over a 32000-word vocabulary) and the cross entropy over
its logits are half of a tiny Mixtral step on CPU (bench/RESULTS.md). Contenders, alternating
round by round, each from the same hidden states, weights, labels and upstream gradient:
- `megatron`: what mixexp's model runs: the GEMM, then megatron-core's `vocab_parallel_cross_entropy`.
- `torch`: the GEMM, then `F.cross_entropy` (log_softmax + nll, the way transformers computes it).
- `chunked C`: a fused linear + cross entropy over vocabulary chunks of C words (online log-sum-exp
  in the forward, logits recomputed chunk by chunk in the backward), the remedy GPU frameworks use
  to keep the full logits out of memory. It does one GEMM more than the others.
Printed: the median time of each, its ratio to `megatron` (above 1: faster than megatron), and the
largest relative difference of its loss and gradients from `megatron`'s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (tokens per micro-batch, hidden) of step_vs_hf.py's models; vocabulary 32000 in both.
SHAPES = {"tiny": (2 * 128, 128), "cpu_medium": (2 * 256, 256)}


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy of (hidden @ weight^T) without materializing all logits at once."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):
        tokens, vocab = hidden.shape[0], weight.shape[0]
        running_max = torch.full((tokens,), -float("inf"))
        running_sum = torch.zeros(tokens)
        for start in range(0, vocab, chunk):
            logits = hidden @ weight[start:start + chunk].t()
            new_max = torch.maximum(running_max, logits.amax(1))
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(logits - new_max[:, None]).sum(1)
            running_max = new_max
        log_sum_exp = running_max + running_sum.log()
        ctx.save_for_backward(hidden, weight, labels, log_sum_exp)
        ctx.chunk = chunk
        return log_sum_exp - (hidden * weight[labels]).sum(1)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, labels, log_sum_exp = ctx.saved_tensors
        grad_hidden, grad_weight = torch.zeros_like(hidden), torch.empty_like(weight)
        rows = torch.arange(hidden.shape[0])
        for start in range(0, weight.shape[0], ctx.chunk):
            w = weight[start:start + ctx.chunk]
            probs = (hidden @ w.t()).sub_(log_sum_exp[:, None]).exp_().mul_(grad[:, None])
            inside = (labels >= start) & (labels < start + w.shape[0])
            probs[rows[inside], labels[inside] - start] -= grad[inside]
            grad_hidden.addmm_(probs, w)
            torch.mm(probs.t(), hidden, out=grad_weight[start:start + w.shape[0]])
        return grad_hidden, grad_weight, None, None


def contenders(chunks: list[int]) -> dict:
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    def megatron(h, w, labels):  # [s*b, h] as megatron's [s, b, vocab] with b = 1
        return vocab_parallel_cross_entropy((h @ w.t()).unsqueeze(1), labels.unsqueeze(1)).squeeze(1)

    def plain(h, w, labels):
        return F.cross_entropy(h @ w.t(), labels, reduction="none")

    out = {"megatron": megatron, "torch": plain}
    for c in chunks:
        out[f"chunked {c}"] = lambda h, w, labels, c=c: ChunkedLinearCrossEntropy.apply(h, w, labels, c)
    return out


def run_once(fn, hidden, weight, labels, grad):
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = fn(h, w, labels)
    loss.backward(grad)
    return loss.detach(), h.grad, w.grad


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(name: str, vocab: int, rounds: int, chunks: list[int]) -> None:
    tokens, width = SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=gen)
    weight = 0.02 * torch.randn(vocab, width, generator=gen)
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    grad = torch.rand(tokens, generator=gen) / tokens  # as a masked mean's gradient: one weight per token
    cases = contenders(chunks)
    reference = run_once(cases["megatron"], hidden, weight, labels, grad)
    diffs = {k: max(rel_diff(x, y) for x, y in zip(run_once(fn, hidden, weight, labels, grad), reference))
             for k, fn in cases.items()}
    times = {k: [] for k in cases}
    for r in range(rounds):
        for k, fn in (cases.items() if r % 2 == 0 else reversed(cases.items())):
            start = time.perf_counter()
            run_once(fn, hidden, weight, labels, grad)
            times[k].append(time.perf_counter() - start)
    base = statistics.median(times["megatron"])
    print(f"[{name}] {tokens} tokens x hidden {width} x vocab {vocab}, forward + backward, {rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:14s} {med * 1e3:7.2f} ms  megatron/this {base / med:5.2f}x  max rel diff {diffs[k]:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--chunk", type=int, nargs="+", default=[2048, 8192], help="vocabulary chunk sizes")
    args = parser.parse_args()
    from rank import compose, init_single_rank

    init_single_rank(compose("parallel=single"))  # megatron's parallel state for its cross entropy
    for name in args.models:
        compare(name, args.vocab, args.rounds, args.chunk)


if __name__ == "__main__":
    main()
