"""The rehearsal's stand-ins for the ops MindSpeed builds at first use against CANN.

MindSpeed compiles some of its ops (rope, grouped GEMM, flash attention v2, the ring-attention
update) with its op builder when they are first called, and keeps each loaded module in
`MindSpeedOpBuilder._loaded_ops` by name. On a CPU rank there is no CANN to build against, so the
rehearsal puts modules there whose functions are mixexp's emulations (`mixexp.devices.npu_ops`):
MindSpeed's own Python around them (autograd functions, argument checks) runs unchanged.

Likewise for MindSpeed's Triton kernels (Triton-Ascend compiles them for the NPU): where MindSpeed
patched one into Megatron, `register_triton_ops` re-points that patch at an emulation with the
kernel's documented semantics.
"""

from __future__ import annotations

import types

import torch

from mixexp.devices import npu_ops

# MindSpeed builder name -> {function MindSpeed calls on the loaded module: emulation in npu_ops}.
JIT_OPS = {
    "npu_rotary_position_embedding": {"npu_rotary_position_embedding": "npu_rotary_position_embedding"},
    "grouped_matmul": {"npu_gmm": "npu_gmm", "npu_gmm_backward": "npu_gmm_backward",
                       "npu_gmm_backward_fusion": "npu_gmm_backward_fusion"},
    "grouped_matmul_v2": {"npu_gmm": "npu_gmm", "npu_gmm_backward": "npu_gmm_backward",
                          "npu_gmm_backward_fusion": "npu_gmm_backward_fusion"},
    "npu_ring_attention_update": {"npu_ring_attention_update": "npu_ring_attention_update"},
    "fusion_attention_v2": {"npu_fusion_attention_v2": "npu_fusion_attention_v2",
                            "npu_fusion_attention_grad_v2": "npu_fusion_attention_grad_v2"},
}


def _not_emulated(builder: str, function: str):
    def refuse(*args, **kwargs):
        raise NotImplementedError(f"MindSpeed op {builder}.{function} is not emulated by the CPU stand-in; turn "
                                  "off the switch that reaches it for the rehearsal")
    return refuse


def loaded_modules() -> dict[str, types.ModuleType]:
    modules = {}
    for builder, functions in JIT_OPS.items():
        module = types.ModuleType(f"mixexp_standin_{builder}")
        for name, emulation in functions.items():
            setattr(module, name, getattr(npu_ops, emulation, None) or _not_emulated(builder, name))
        modules[builder] = module
    return modules


def register_jit_ops() -> None:
    from mindspeed.op_builder.builder import MindSpeedOpBuilder

    MindSpeedOpBuilder._loaded_ops.update(loaded_modules())


def sort_chunks_by_index(inp: torch.Tensor, split_sizes: torch.Tensor, sorted_index: torch.Tensor) -> torch.Tensor:
    """MindSpeed's `moe_sort_chunks_by_index`: split `inp` along dim 0 into chunks of `split_sizes`, then
    concatenate the chunks in the order `sorted_index` gives (Transformer Engine's fused_sort_chunks_by_index)."""
    chunks = torch.split(inp, split_sizes.tolist(), dim=0)
    return torch.cat([chunks[i] for i in sorted_index.tolist()], dim=0)


def sort_chunks_by_index_with_probs(inp: torch.Tensor, probs: torch.Tensor, split_sizes: torch.Tensor,
                                    sorted_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same chunk order applied to the tokens and to their routing probabilities."""
    return (sort_chunks_by_index(inp, split_sizes, sorted_index),
            sort_chunks_by_index(probs, split_sizes, sorted_index))


# MindSpeed's Triton entry points (module, function) -> emulation.
TRITON_OPS = {
    ("mindspeed.ops.triton.sort_chunks_by_idx", "moe_sort_chunks_by_index"): sort_chunks_by_index,
    ("mindspeed.ops.triton.sort_chunks_by_idx", "moe_sort_chunks_by_index_with_probs"):
        sort_chunks_by_index_with_probs,
}


def register_triton_ops() -> None:
    """Re-point every MindSpeed patch whose replacement is one of its Triton kernels at the emulation."""
    from mindspeed.patch_utils import MindSpeedPatchesManager

    replaced = False
    for patch in MindSpeedPatchesManager.patches_info.values():
        func = patch.patch_func
        emulation = TRITON_OPS.get((getattr(func, "__module__", None), getattr(func, "__name__", None)))
        if emulation is not None:
            patch.set_patch_func(emulation, force_patch=True)
            replaced = True
    if replaced:
        MindSpeedPatchesManager.apply_patches()


# MindSpeed ops that it registers with torch's dispatcher for the NPU (PrivateUse1) only:
# (module, Python kernel, op overloads). The same kernels serve CPU tensors in the rehearsal.
DISPATCHER_OPS = (
    ("mindspeed.ops.gmm", "_npu_gmm", ("npu_gmm.List", "npu_gmm.Tensor")),
    ("mindspeed.ops.gmm", "_npu_gmm_v2", ("npu_gmm_v2.Tensor",)),
)


def register_cpu_kernels() -> None:
    import importlib

    from mindspeed.op_builder.builder import AS_LIBRARY
    from torch.library import impl

    for module_name, kernel, overloads in DISPATCHER_OPS:
        module = importlib.import_module(module_name)
        for overload in overloads:
            impl(AS_LIBRARY, overload, "CPU")(getattr(module, kernel))
