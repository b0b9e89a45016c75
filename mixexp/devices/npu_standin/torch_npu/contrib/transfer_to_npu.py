"""What torch_npu's transfer_to_npu does (CUDA calls go to the NPU, nccl becomes hccl), with the NPU
being the CPU: mixexp's CPU adaptor maps CUDA (and NPU) placements, streams, events and RNG to the
CPU, and the accelerator collective backends (hccl, nccl) become gloo."""

import functools
import inspect

import torch.distributed as dist

from mixexp.devices import cpu

_ACCELERATOR_BACKENDS = ("hccl", "nccl")


def _on_gloo(fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        if bound.arguments.get("backend") in _ACCELERATOR_BACKENDS:
            bound.arguments["backend"] = "gloo"
        return fn(*bound.args, **bound.kwargs)
    return wrapper


cpu.map_accelerator_to("cpu")
dist.init_process_group = _on_gloo(dist.init_process_group)
dist.new_group = _on_gloo(dist.new_group)
