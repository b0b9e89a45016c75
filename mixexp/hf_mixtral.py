"""Hugging Face Mixtral tensors <-> megatron-core's global sharded-state-dict keys.

Each HF tensor (or a block of its rows) is one regular chunk of one global
tensor of our checkpoint, as `dist_checkpointing` stores it for any layout:

  model.embed_tokens.weight                   embedding.word_embeddings.weight        [vocab, h]
  lm_head.weight                              output_layer.weight                     [vocab, h]
  model.norm.weight                           decoder.final_layernorm.weight          [h]
  layers.N.input_layernorm.weight             decoder.layers.input_layernorm.weight   [L, h]
  layers.N.post_attention_layernorm.weight    decoder.layers.pre_mlp_layernorm.weight [L, h]
  layers.N.self_attn.{q,k,v}_proj.weight      decoder.layers.self_attention.linear_qkv.weight [L, (heads+2g)*d, h]
      interleaved per query group: [q heads of group 0, k0, v0, q heads of group 1, k1, v1, ...]
  layers.N.self_attn.o_proj.weight            decoder.layers.self_attention.linear_proj.weight [L, h, heads*d]
  layers.N.block_sparse_moe.gate.weight       decoder.layers.mlp.router.weight        [L, E, h]
  layers.N.block_sparse_moe.experts.E.w1/w3   decoder.layers.mlp.experts.experts.linear_fc1.weight [L, E, 2*ffn, h]
      SwiGLU: rows [0, ffn) are w1 (gate), rows [ffn, 2*ffn) are w3 (up)
  layers.N.block_sparse_moe.experts.E.w2      decoder.layers.mlp.experts.experts.linear_fc2.weight [L, E, h, ffn]

(`model.` prefixes the HF names of the layers too.) Only these keys matter, not
module names: an expert implementation that keeps Megatron's sharded keys (the
grouped-GEMM experts do) converts the same. Pure Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DECODER = "decoder.layers."
EXPERTS = DECODER + "mlp.experts.experts."


@dataclass(frozen=True)
class MixtralShape:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int  # of each expert
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    num_experts: int
    moe_router_topk: int = 2
    tie_embeddings: bool = False
    norm_epsilon: float = 1e-5
    rotary_base: float = 1e6
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, config: dict) -> "MixtralShape":
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        if head_dim * heads != config["hidden_size"]:
            raise ValueError(f"head_dim={head_dim} x num_attention_heads={heads} != hidden_size="
                             f"{config['hidden_size']}: not supported (Megatron's kv_channels = hidden/heads here)")
        return cls(num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                   ffn_hidden_size=config["intermediate_size"], num_attention_heads=heads,
                   num_query_groups=config.get("num_key_value_heads") or heads, vocab_size=config["vocab_size"],
                   num_experts=config["num_local_experts"], moe_router_topk=config.get("num_experts_per_tok", 2),
                   tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                   norm_epsilon=config.get("rms_norm_eps", 1e-5), rotary_base=config.get("rope_theta", 1e6),
                   max_position_embeddings=config.get("max_position_embeddings", 32768))

    @classmethod
    def from_model_config(cls, m) -> "MixtralShape":
        """From mixexp's model config (conf/model/*.yaml)."""
        return cls(num_layers=m["num_layers"], hidden_size=m["hidden_size"],
                   ffn_hidden_size=m.get("moe_ffn_hidden_size") or m["ffn_hidden_size"],
                   num_attention_heads=m["num_attention_heads"], num_query_groups=m["num_query_groups"],
                   vocab_size=m["vocab_size"], num_experts=m["num_experts"], moe_router_topk=m["moe_router_topk"],
                   tie_embeddings=not m["untie_embeddings"], norm_epsilon=m["norm_epsilon"],
                   rotary_base=m["rotary_base"], max_position_embeddings=m["max_position_embeddings"])

    def model_config(self, name: str = "converted") -> dict:
        """mixexp model config fields (what `model=...` must agree with)."""
        return {"name": name, "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "ffn_hidden_size": self.ffn_hidden_size, "moe_ffn_hidden_size": None,
                "num_attention_heads": self.num_attention_heads, "num_query_groups": self.num_query_groups,
                "vocab_size": self.vocab_size, "num_experts": self.num_experts,
                "moe_router_topk": self.moe_router_topk, "untie_embeddings": not self.tie_embeddings,
                "norm_epsilon": self.norm_epsilon, "rotary_base": self.rotary_base,
                "max_position_embeddings": self.max_position_embeddings}

    def hf_config(self) -> dict:
        """A config.json for transformers' MixtralForCausalLM."""
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "hidden_size": self.hidden_size, "intermediate_size": self.ffn_hidden_size,
                "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_query_groups, "head_dim": self.head_dim,
                "vocab_size": self.vocab_size, "num_local_experts": self.num_experts,
                "num_experts_per_tok": self.moe_router_topk, "tie_word_embeddings": self.tie_embeddings,
                "rms_norm_eps": self.norm_epsilon, "rope_theta": self.rotary_base,
                "max_position_embeddings": self.max_position_embeddings, "hidden_act": "silu",
                "bos_token_id": 1, "eos_token_id": 2}

    def differences(self, other: "MixtralShape") -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: {mine[k]} vs {theirs[k]}" for k in mine if mine[k] != theirs[k]]


@dataclass(frozen=True)
class Block:
    """Rows [rows[0], rows[1]) of HF tensor `hf` are one chunk of global tensor `key`.

    `rank_offsets` are dist_checkpointing's (axis, chunk index, chunks along the axis);
    the first `prepend` axes (layer, expert) are axes the HF tensor does not have.
    """

    hf: str
    key: str
    rank_offsets: tuple
    prepend: int = 0
    rows: tuple | None = None  # None: the whole HF tensor


def blocks(s: MixtralShape) -> list[Block]:
    out = [Block("model.embed_tokens.weight", "embedding.word_embeddings.weight", ()),
           Block("model.norm.weight", "decoder.final_layernorm.weight", ())]
    if not s.tie_embeddings:
        out.append(Block("lm_head.weight", "output_layer.weight", ()))
    d, groups = s.head_dim, s.num_query_groups
    per_group = s.num_attention_heads // groups + 2  # q heads, k, v
    qkv_chunks = groups * per_group
    L, E = s.num_layers, s.num_experts
    for n in range(L):
        hf, layer = f"model.layers.{n}.", (0, n, L)
        out += [Block(hf + "input_layernorm.weight", DECODER + "input_layernorm.weight", (layer,), 1),
                Block(hf + "post_attention_layernorm.weight", DECODER + "pre_mlp_layernorm.weight", (layer,), 1),
                Block(hf + "self_attn.o_proj.weight", DECODER + "self_attention.linear_proj.weight", (layer,), 1),
                Block(hf + "block_sparse_moe.gate.weight", DECODER + "mlp.router.weight", (layer,), 1)]
        qkv = DECODER + "self_attention.linear_qkv.weight"
        for g in range(groups):
            for j in range(per_group - 2):
                head = g * (per_group - 2) + j
                out.append(Block(hf + "self_attn.q_proj.weight", qkv, (layer, (1, g * per_group + j, qkv_chunks)),
                                 1, (head * d, (head + 1) * d)))
            for j, name in ((per_group - 2, "k_proj"), (per_group - 1, "v_proj")):
                out.append(Block(hf + f"self_attn.{name}.weight", qkv, (layer, (1, g * per_group + j, qkv_chunks)),
                                 1, (g * d, (g + 1) * d)))
        for e in range(E):
            ex, at = f"{hf}block_sparse_moe.experts.{e}.", (layer, (1, e, E))
            out += [Block(ex + "w1.weight", EXPERTS + "linear_fc1.weight", (*at, (2, 0, 2)), 2),
                    Block(ex + "w3.weight", EXPERTS + "linear_fc1.weight", (*at, (2, 1, 2)), 2),
                    Block(ex + "w2.weight", EXPERTS + "linear_fc2.weight", at, 2)]
    return out


def hf_names(bs: list[Block]) -> list[str]:
    """HF tensor names in first-seen order (no repeats)."""
    return list(dict.fromkeys(b.hf for b in bs))


def hf_shapes(s: MixtralShape) -> dict[str, tuple]:
    """The shape of every HF tensor of this model."""
    h, d, ffn = s.hidden_size, s.head_dim, s.ffn_hidden_size
    shapes = {"model.embed_tokens.weight": (s.vocab_size, h), "model.norm.weight": (h,)}
    if not s.tie_embeddings:
        shapes["lm_head.weight"] = (s.vocab_size, h)
    for n in range(s.num_layers):
        p = f"model.layers.{n}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (s.num_attention_heads * d, h),
                       p + "self_attn.k_proj.weight": (s.num_query_groups * d, h),
                       p + "self_attn.v_proj.weight": (s.num_query_groups * d, h),
                       p + "self_attn.o_proj.weight": (h, s.num_attention_heads * d),
                       p + "block_sparse_moe.gate.weight": (s.num_experts, h)})
        for e in range(s.num_experts):
            ex = f"{p}block_sparse_moe.experts.{e}."
            shapes.update({ex + "w1.weight": (ffn, h), ex + "w3.weight": (ffn, h), ex + "w2.weight": (h, ffn)})
    return shapes


def layer_of(hf_name: str) -> int | None:
    """The decoder layer an HF tensor belongs to (None: embeddings, final norm, head)."""
    parts = hf_name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


def region(b: Block, hf_shape: tuple) -> tuple[tuple, tuple]:
    """(global offset, shape) of the chunk `b` covers, prepended axes included."""
    local = (b.rows[1] - b.rows[0], *hf_shape[1:]) if b.rows else tuple(hf_shape)
    sizes = (1,) * b.prepend + local
    offset = [0] * len(sizes)
    for axis, index, _ in b.rank_offsets:
        offset[axis] = index * sizes[axis]
    return tuple(offset), sizes
