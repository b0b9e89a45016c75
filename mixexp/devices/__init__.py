"""Device adaptors, applied in each worker before megatron-core is imported.

`prepare(device)` patches torch for the device (before megatron is imported);
`finish(device)` patches megatron-core itself (after it is imported).
"""

from __future__ import annotations

import importlib


def _module(device: str):
    if device not in ("cpu", "cuda", "npu"):
        raise ValueError(f"hardware.device={device} must be one of cpu|cuda|npu")
    return importlib.import_module(f"mixexp.devices.{device}")


def prepare(device: str, cfg) -> None:
    """Patch torch for `device` given the run's resolved config (NPU renders Megatron argv from it)."""
    _module(device).prepare(cfg)


def finish(device: str) -> None:
    _module(device).finish()


def torch_device(device: str):
    return _module(device).torch_device()


def peak_memory_gb(device: str) -> float:
    return _module(device).peak_memory_gb()


def after_first_step(device: str, cfg) -> None:
    """Device checks that need a step to have run (NPU: did MindSpeed's switches take effect)."""
    hook = getattr(_module(device), "after_first_step", None)
    if hook:
        hook(cfg)


def stack(device: str) -> dict:
    """The software that ran: torch and megatron-core; on NPU also MindSpeed, torch_npu and its features."""
    module = _module(device)
    if hasattr(module, "stack"):
        return module.stack()
    import torch
    from megatron.core import package_info

    return {"torch": torch.__version__, "megatron_core": package_info.__version__}
