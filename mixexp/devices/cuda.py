"""Run megatron-core on NVIDIA GPUs: NCCL, bf16, one GPU per rank.

megatron-core targets CUDA, so nothing needs patching. `prepare` binds this rank to
its GPU (LOCAL_RANK) before the NCCL process group is created and sets what Megatron
expects of the environment. The layer spec follows what is installed
(`spec_options`): Transformer Engine's spec when `transformer_engine` imports (fused
attention, TE linear layers, TE grouped GEMM for the experts), else Megatron's local
spec with our RMSNorm and torch's fused SDPA attention, with grouped-GEMM experts when
the `grouped_gemm` package is installed.
"""

from __future__ import annotations

import importlib
import os

from mixexp.errors import ConfigError


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # a broken install (missing CUDA libraries, ABI mismatch) counts as absent
        return False
    return True


def spec_options() -> tuple[bool, bool]:
    """(use Transformer Engine, use grouped GEMM for the experts) given what imports here."""
    if _imports("transformer_engine"):
        return True, True  # TEGroupedMLP
    return False, _imports("grouped_gemm")  # GroupedMLP over the grouped_gemm kernels


def te_layer_spec(config, options: tuple[bool, bool] | None = None):
    """(Transformer Engine's MoE layer spec, its final norm) when TE imports here, else None.
    `options`: spec_options(), when the caller has them already (failed imports are not cached)."""
    te, grouped = options or spec_options()
    if not te:
        return None
    from megatron.core.extensions.transformer_engine import TENorm
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=grouped), TENorm


def check_node(ranks: int, bf16: bool) -> None:
    """Before launching: this node has a CUDA torch, `ranks` GPUs and, if asked, bf16 (raises ConfigError)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"hardware.device=cuda but torch {torch.__version__} sees no CUDA GPU (built for CUDA "
                          f"{torch.version.cuda}): install a CUDA build of torch or pick hardware=cpu")
    count = torch.cuda.device_count()
    if ranks > count:
        raise ConfigError(f"this node runs {ranks} ranks but sees {count} GPU(s): set cluster.devices_per_node={count} "
                          f"or check CUDA_VISIBLE_DEVICES")
    if bf16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 is not supported by {torch.cuda.get_device_name(0)}: "
                          f"use train.precision=fp32")


def prepare(cfg=None) -> None:
    """Bind this rank to GPU LOCAL_RANK; check that bf16 runs here when the config asks for it."""
    # Megatron orders its tensor-parallel communication with one hardware queue (needed with
    # sequence parallelism); must be set before the CUDA context exists.
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"hardware.device=cuda but torch {torch.__version__} sees no CUDA GPU (built for CUDA "
                          f"{torch.version.cuda}): install a CUDA build of torch or pick hardware=cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"rank {local_rank} of this node has no GPU: {count} visible; lower "
                          f"cluster.devices_per_node to {count} or check CUDA_VISIBLE_DEVICES")
    torch.cuda.set_device(local_rank)
    if cfg is not None and cfg.train.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16 is not supported by {torch.cuda.get_device_name(local_rank)}: "
                          f"use train.precision=fp32")
    # fp32 matmuls on tensor cores (TF32), as Megatron does by default.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def finish() -> None:
    """megatron-core runs on CUDA as it is."""


def torch_device():
    import torch

    return torch.device("cuda", torch.cuda.current_device())


def peak_memory_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


if __name__ == "__main__":  # python -m mixexp.devices.cuda RANKS BF16: the launcher's check, one line on failure
    import sys

    try:
        check_node(int(sys.argv[1]), sys.argv[2] == "bf16")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
