"""Switches of the Megatron-LM / MindSpeed command line that the model and layout do not decide.

`NpuConfig` is the schema of the root config's `npu` group (`npu.use_fused_rmsnorm=false`,
`npu.optimization_level=1`, ...). The MindSpeed switches (fused kernels, MoE permutation,
context-parallel overlap, optimization level) apply on `hardware.device=npu`; the Megatron ones
(grouped GEMM, DDP overlap, NaN check) also reach Megatron-LM on GPU through `engine=megatron_lm`.
Defaults reproduce MindSpeed-LLM's Mixtral-8x7B pretraining script. `None` means "decided by the
rest of the config" (see each field). Pure Python: no torch, no hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional


@dataclass
class NpuConfig:
    # MindSpeed's patch level: 0 the minimum to run on NPU, 1 adds fused kernels (swiglu, rotary,
    # MoE permute), 2 adds fused RMSNorm, the MoE alltoall dispatcher patches, grouped MLP and CP.
    optimization_level: int = 2
    # Fused kernels (MindSpeed).
    use_fused_rmsnorm: bool = True
    use_fused_swiglu: bool = True
    use_fused_rotary_pos_emb: bool = True
    use_flash_attn: bool = True
    masked_softmax_fusion: bool = False  # False renders --no-masked-softmax-fusion (flash attention replaces it)
    # MoE (MindSpeed).
    moe_permutation_async_comm: bool = True
    use_fused_moe_token_permute_and_unpermute: bool = True
    moe_alltoall_overlap_comm: bool = False
    moe_tp_extend_ep: bool = False
    # Context parallelism (MindSpeed): overlap of the ring's send/recv; the Ulysses degree inside
    # hybrid_cp_algo (cp = ulysses degree x ring degree).
    use_cp_send_recv_overlap: bool = True
    ulysses_degree_in_cp: Optional[int] = None
    # Memory and communication (MindSpeed).
    use_ascend_mc2: bool = False
    reuse_fp32_param: bool = False
    swap_attention: bool = False
    # Megatron switches. None: grouped GEMM whenever the model has experts (off NPU only in bf16:
    # Megatron's grouped_gemm package is bf16 only, MindSpeed's npu_gmm takes fp32); parameter-gather overlap whenever
    # parallel.distributed_optimizer is on (it needs it).
    moe_grouped_gemm: Optional[bool] = None
    overlap_grad_reduce: bool = True
    overlap_param_gather: Optional[bool] = None
    check_for_nan_in_loss_and_grad: bool = False


FIELDS = tuple(f.name for f in fields(NpuConfig))


def npu_config(cfg: Any) -> NpuConfig:
    """The run's NpuConfig: `cfg.npu` where the root config has it, the defaults elsewhere."""
    node = cfg.get("npu")
    if node is None:
        return NpuConfig()
    values = dict(node.items())
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        from mixexp.errors import ConfigError
        raise ConfigError(f"npu.{unknown[0]} is not a known switch (known: {', '.join(FIELDS)})")
    return NpuConfig(**values)
