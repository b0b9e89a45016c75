"""Run megatron-core on CPU: map its hard-coded CUDA calls to the CPU.

Megatron places tensors with `device=torch.cuda.current_device()` or "cuda",
times with CUDA events, overlaps with CUDA streams and keeps a CUDA RNG
tracker. Like torch_npu's transfer_to_npu does for NPUs, we redirect those
to the CPU: tensor factories and `.to()/.cuda()` get their device rewritten,
streams and events become no-ops, and the RNG tracker uses the CPU generator.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import torch

_FACTORIES = (
    "empty", "zeros", "ones", "full", "tensor", "as_tensor", "arange", "rand", "randn",
    "randint", "randperm", "empty_like", "zeros_like", "ones_like", "full_like", "rand_like",
    "randn_like", "empty_strided", "linspace", "eye", "tril_indices", "triu_indices",
)
_applied = False
_target = "cpu"  # "meta" in dry runs: nothing is allocated


def _is_accelerator(device) -> bool:
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.startswith(("cuda", "npu"))
    return isinstance(device, torch.device) and device.type in ("cuda", "npu")


def _map_device(device):
    return _target if _is_accelerator(device) else device


def _redirect_device_kwarg(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinned memory exists only beside an accelerator
        return fn(*args, **kwargs)
    return wrapper


def _tensor_to(original):
    @functools.wraps(original)
    def to(self, *args, **kwargs):
        if args and _is_accelerator(args[0]):
            args = (_target,) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        return original(self, *args, **kwargs)
    return to


def _tensor_type(original):
    """`t.type()` names CUDA types: Megatron asserts e.g. grad.type() == 'torch.cuda.FloatTensor'."""
    @functools.wraps(original)
    def type_(self, *args, **kwargs):
        name = original(self, *args, **kwargs)
        if args or kwargs or not isinstance(name, str) or name.startswith("torch.cuda."):
            return name
        return name.replace("torch.", "torch.cuda.", 1)
    return type_


class Stream:
    """A CUDA stream stand-in: work on CPU is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return event or Event()

    def query(self):
        return True


class Event:
    """A CUDA event stand-in that records wall-clock time."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None):
        self._t = time.perf_counter()

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def elapsed_time(self, end):
        return (end._t - self._t) * 1000.0


def _noop():
    # A fresh function per patched name: torch._dynamo refuses one object under two names.
    return lambda *args, **kwargs: None


def prepare(cfg=None, target: str = "cpu") -> None:
    """Patch torch so CUDA placements land on `target` (cpu, or meta for dry runs), then import
    megatron-core without torch.compile. Idempotent."""
    map_accelerator_to(target)
    _import_megatron_without_compile()


def map_accelerator_to(target: str = "cpu") -> None:
    """Tensor factories, `.to()`, streams, events and the RNG of CUDA (and NPU) on `target`. Imports
    no megatron: the rehearsal's torch_npu stand-in calls it before MindSpeed patches megatron."""
    global _applied, _target
    _target = target
    if _applied:
        return
    _applied = True
    for name in _FACTORIES:
        setattr(torch, name, _redirect_device_kwarg(getattr(torch, name)))
    for name in ("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"):
        setattr(torch.Tensor, name, _redirect_device_kwarg(getattr(torch.Tensor, name)))
    torch.Tensor.to = _tensor_to(torch.Tensor.to)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.type = _tensor_type(torch.Tensor.type)
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.record_stream = lambda self, stream: None

    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = _noop()
    cuda.device_count = lambda: 1
    cuda.synchronize = _noop()
    cuda.empty_cache = _noop()
    cuda.Stream = Stream
    cuda.Event = Event
    cuda.current_stream = lambda *a, **k: Stream()
    cuda.default_stream = lambda *a, **k: Stream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.set_stream = _noop()
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = _noop()
    cuda.nvtx.range_push = _noop()
    cuda.nvtx.range_pop = _noop()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: None  # the CPU generator is seeded by the caller
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state


def _import_megatron_without_compile() -> None:
    """Import megatron-core with its `jit_fuser` as a plain decorator.

    At import, megatron-core wraps its fused element-wise functions in `torch.compile`, which pulls in
    torch._dynamo and inductor (about 2 s of the worker's start-up here) and compiles C++ kernels when
    they are first called. On CPU they gain nothing: they run as written, as megatron's own
    `disable_jit_fuser()` would have them.
    """
    compile_ = torch.compile
    torch.compile = lambda model=None, **kwargs: model if model is not None else (lambda fn: fn)
    try:
        from megatron.core import jit
    finally:
        torch.compile = compile_
    jit.disable_jit_fuser()


def finish() -> None:
    """Patch megatron-core modules that hold CUDA-only code paths."""
    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer.moe import moe_utils

    # moe_utils only defines this name when Transformer Engine imports; None selects torch's matmul.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None

    # The RNG tracker swaps generator states; on CPU there is one generator.
    tp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # With one generator, the tracker's "CPU state changed inside a CUDA fork" check always fires.
    logging.getLogger(tp_random.__name__).setLevel(logging.ERROR)

    patch_gloo_collectives()


def patch_gloo_collectives() -> None:
    """What megatron-core's MoE dispatchers need of gloo: all_to_all split sizes as Python lists, and
    padded gathers and reduce-scatters (gloo moves equal sizes only) for the uneven ones they send."""
    import torch.distributed as dist
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel import mappings
    from megatron.core.transformer.moe import token_dispatcher

    all_to_all = tensor_parallel.all_to_all

    def all_to_all_lists(group, input_, output_split_sizes_=None, input_split_sizes=None):
        def as_list(sizes):
            return None if sizes is None else [int(s) for s in sizes]
        return all_to_all(group, input_, as_list(output_split_sizes_), as_list(input_split_sizes))

    token_dispatcher.all_to_all = all_to_all_lists

    gather, reduce_scatter = mappings._gather_along_first_dim, mappings._reduce_scatter_along_first_dim

    def padded(t: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))]) if t.shape[0] < rows else t

    def gather_uneven(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return gather(input_, group, output_split_sizes, use_global_buffer)
        sizes = [int(s) for s in output_split_sizes]
        rows = max(sizes)
        out = input_.new_empty((rows * len(sizes),) + tuple(input_.shape[1:]))
        dist.all_gather_into_tensor(out, padded(input_.contiguous(), rows), group=group)
        return torch.cat([out[i * rows:i * rows + n] for i, n in enumerate(sizes)])

    def reduce_scatter_uneven(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or group.size() == 1:
            return reduce_scatter(input_, group, input_split_sizes, use_global_buffer)
        sizes = [int(s) for s in input_split_sizes]
        rows = max(sizes)
        chunks = torch.split(input_, sizes, dim=0)
        out = input_.new_empty((rows,) + tuple(input_.shape[1:]))
        dist.reduce_scatter_tensor(out, torch.cat([padded(c, rows) for c in chunks]).contiguous(), group=group)
        return out[: sizes[group.rank()]]

    mappings._gather_along_first_dim = gather_uneven
    mappings._reduce_scatter_along_first_dim = reduce_scatter_uneven


def peak_memory_gb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def torch_device() -> torch.device:
    return torch.device("cpu")
