"""Parameter and FLOP counts as pure functions of the model config.

FLOPs follow Megatron-LM's MoE-aware formula (`num_floating_point_operations`):
forward + backward = 3 x forward, 2 FLOPs per multiply-add, attention scores
and values counted with the causal half applied (6*h*s per token per layer),
the experts counted at top-k of them per token, SwiGLU as 3/2 of a plain MLP.
The router's gating GEMM is left out, as Megatron does.
"""

from __future__ import annotations


def padded_vocab_size(m, tp: int = 1) -> int:
    """Megatron pads the vocabulary to a multiple of make_vocab_size_divisible_by * tp."""
    multiple = (m.make_vocab_size_divisible_by or 1) * tp
    return -(-m.vocab_size // multiple) * multiple


def kv_channels(m) -> int:
    return m.hidden_size // m.num_attention_heads


def params_per_layer(m) -> int:
    h, d = m.hidden_size, kv_channels(m)
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    attention = h * (q + 2 * kv) + q * h
    expert_ffn = m.moe_ffn_hidden_size or m.ffn_hidden_size
    if m.num_experts:
        mlp = m.num_experts * 3 * h * expert_ffn + m.num_experts * h  # SwiGLU experts + router
    else:
        mlp = 3 * h * m.ffn_hidden_size
    return attention + mlp + 2 * h  # + input and pre-MLP RMSNorm


def params_total(m, padded_vocab: int | None = None) -> int:
    vocab = padded_vocab or m.vocab_size
    embeddings = vocab * m.hidden_size * (2 if m.untie_embeddings else 1)
    return m.num_layers * params_per_layer(m) + embeddings + m.hidden_size  # + final norm


def layer_flops_per_token(m, seq_length: int) -> float:
    """Training FLOPs (forward + backward) per token of one decoder layer."""
    h = m.hidden_size
    q_ratio = m.num_attention_heads * kv_channels(m) / h
    attention = (1 + m.num_query_groups / m.num_attention_heads + seq_length / (2 * h)) * q_ratio
    if m.num_experts:
        mlp = (m.moe_ffn_hidden_size or m.ffn_hidden_size) / h * m.moe_router_topk * 1.5
    else:
        mlp = m.ffn_hidden_size / h * 1.5
    return 12 * h * h * (attention + mlp)


def core_attention_flops_per_token(m, seq_length: int) -> float:
    """The part of a layer's FLOPs per token in QK^T and AV (causal half), what selective recompute redoes."""
    return 6 * seq_length * m.num_attention_heads * kv_channels(m)


def flops_per_token(m, seq_length: int, padded_vocab: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token."""
    vocab = padded_vocab or m.vocab_size
    return m.num_layers * layer_flops_per_token(m, seq_length) + 6 * m.hidden_size * vocab
