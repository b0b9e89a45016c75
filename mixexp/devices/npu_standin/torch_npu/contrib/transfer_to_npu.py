"""What torch_npu's transfer_to_npu does (CUDA calls go to the NPU, nccl becomes hccl), with the NPU
being the CPU: mixexp's CPU adaptor maps CUDA (and NPU) placements, streams, events and RNG to the
CPU, and the NPU collective backends become gloo."""

import functools

import torch.distributed as dist

from mixexp.devices import cpu

_ACCELERATOR_BACKENDS = ("hccl", "nccl")


def _gloo_backend(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.get("backend") in _ACCELERATOR_BACKENDS:
            kwargs["backend"] = "gloo"
        if args and args[0] in _ACCELERATOR_BACKENDS and fn is _init_process_group:
            args = ("gloo",) + args[1:]
        return fn(*args, **kwargs)
    return wrapper


_init_process_group = dist.init_process_group
cpu.map_accelerator_to("cpu")
dist.init_process_group = _gloo_backend(dist.init_process_group)
dist.new_group = _gloo_backend(dist.new_group)
