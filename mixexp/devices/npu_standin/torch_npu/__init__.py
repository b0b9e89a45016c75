"""CPU stand-in for torch_npu: the `torch.npu` device API on the CPU and emulated fused ops.

Importing it does what importing torch_npu does for MindSpeed's purposes: `torch.npu` exists (the
device API, on the CPU), tensors and modules have `.npu()`, and the fused ops MindSpeed calls
(`torch_npu.npu_rms_norm`, ...) are there, computed by `mixexp.devices.npu_ops` from their documented
semantics. An op that is not emulated raises `NotEmulated` naming it and the switch that reaches it;
it is an AttributeError, so MindSpeed's own `hasattr(torch_npu, op)` feature checks see it as absent.
"""

import os

import torch

import triton_standin
from torch_npu import _C, npu  # noqa: F401

triton_standin.install()  # MindSpeed imports its Triton kernels at import time

__version__ = "cpu-standin"
# The quantized dtypes torch_npu has no kernels for (MindSpeed skips them when it scans dtypes).
unsupported_dtype = [torch.quint8, torch.quint4x2, torch.quint2x4, torch.qint32, torch.qint8]
STANDIN = True  # mixexp.devices.npu tells the stand-in from a real torch_npu by this

# The switches that reach each fused op, for the error of an op that is not emulated.
SWITCH_OF_OP = {
    "npu_fusion_attention": "npu.use_flash_attn / parallel.cp_algo",
    "npu_fusion_attention_grad": "npu.use_flash_attn / parallel.cp_algo",
    "npu_rms_norm": "npu.use_fused_rmsnorm",
    "npu_swiglu": "npu.use_fused_swiglu",
    "npu_rotary_mul": "npu.use_fused_rotary_pos_emb",
    "npu_grouped_matmul": "npu.moe_grouped_gemm",
}


class NotEmulated(AttributeError):
    pass


# Ops to leave out, comma-separated: rehearses an older torch_npu that lacks them (and what MindSpeed
# then does about it).
WITHOUT_OPS = set(filter(None, os.environ.get("MIXEXP_STANDIN_WITHOUT_OPS", "").split(",")))


def __getattr__(name: str):
    from mixexp.devices import npu_ops

    if name.startswith(("npu_", "_npu_")) and name not in WITHOUT_OPS and hasattr(npu_ops, name):
        return getattr(npu_ops, name)
    switch = SWITCH_OF_OP.get(name, "a MindSpeed switch of this run")
    raise NotEmulated(f"torch_npu.{name} is not emulated by the CPU stand-in (reached through {switch}); "
                      "turn that switch off for the rehearsal or emulate the op in mixexp/devices/npu_ops.py")


torch.npu = npu
torch.Tensor.npu = lambda self, *args, **kwargs: self
torch.nn.Module.npu = lambda self, *args, **kwargs: self
