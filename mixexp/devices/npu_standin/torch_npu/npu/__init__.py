"""`torch.npu` on the CPU: one device (index 0) whose streams, events, RNG and memory are the CPU's.

Streams and events are mixexp's CPU ones (work on the CPU is already ordered; events record wall
time). The default generator is the CPU generator, seeded by the caller, as on mixexp's native CPU
path: so a rehearsal rank draws the same random numbers as a native one. Memory figures are the
process's resident memory, which is what a CPU rank has.
"""

from __future__ import annotations

import contextlib
import resource
import types

import torch

from mixexp.devices.cpu import Event, Stream

DEVICE_NAME = "Ascend910B (CPU stand-in)"
_peak_reset_at = 0


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    return True


def init() -> None:
    pass


def device_count() -> int:
    return 1


def current_device() -> int:
    return 0


def set_device(device) -> None:
    pass


def synchronize(device=None) -> None:
    pass


def get_device_name(device=None) -> str:
    return DEVICE_NAME


def get_device_capability(device=None) -> tuple[int, int]:
    return (0, 0)


def _total_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def get_device_properties(device=None):
    return types.SimpleNamespace(name=DEVICE_NAME, total_memory=_total_memory(), multi_processor_count=1)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_allocated(device=None) -> int:
    return _rss_bytes()


def max_memory_allocated(device=None) -> int:
    return _rss_bytes()


memory_reserved = memory_allocated
max_memory_reserved = max_memory_allocated


def memory_stats(device=None) -> dict:
    return {"allocated_bytes.all.current": _rss_bytes(), "allocated_bytes.all.peak": _rss_bytes()}


def mem_get_info(device=None) -> tuple[int, int]:
    total = _total_memory()
    return total - _rss_bytes(), total


def reset_peak_memory_stats(device=None) -> None:
    pass


reset_max_memory_allocated = reset_peak_memory_stats


def empty_cache() -> None:
    pass


def set_compile_mode(jit_compile: bool = False) -> None:
    pass


def set_option(option) -> None:
    pass


_default_stream = Stream()


def current_stream(device=None) -> Stream:
    return _default_stream


def default_stream(device=None) -> Stream:
    return _default_stream


def stream(s=None):
    return contextlib.nullcontext(s)


def set_stream(s) -> None:
    pass


class device:
    """`with torch.npu.device(i):` selects nothing: there is one device."""

    def __init__(self, index=None):
        self.index = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lazy_call(callback, **kwargs) -> None:
    callback()  # the device is always initialised


default_generators = (torch.default_generator,)


def manual_seed(seed: int) -> None:
    pass  # the CPU generator is seeded by the caller (torch.manual_seed), as on the native CPU path


manual_seed_all = manual_seed


def get_rng_state(device=None) -> torch.Tensor:
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device=None) -> None:
    torch.set_rng_state(state)


class _Mstx:
    """Ascend's profiler markers: nothing to mark on the CPU."""

    @staticmethod
    def range_start(message: str = "", stream=None) -> int:
        return 0

    @staticmethod
    def range_end(range_id: int = 0) -> None:
        pass

    @staticmethod
    def mark(message: str = "", stream=None) -> None:
        pass


mstx = _Mstx()


class _Memory(types.ModuleType):
    def change_current_allocator(self, allocator) -> None:
        raise NotImplementedError("torch.npu.memory.change_current_allocator: the CPU stand-in has no NPU "
                                  "allocator to replace (turn off the MindSpeed switch that swaps it)")

    NPUPluggableAllocator = None


memory = _Memory("torch_npu.npu.memory")
