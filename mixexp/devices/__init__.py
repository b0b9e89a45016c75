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
