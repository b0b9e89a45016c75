"""An import-only `triton` for the rehearsal: MindSpeed imports its Triton kernels at import time.

Kernels can be defined (`@triton.jit`, `@triton.autotune`, `tl.constexpr` annotations) but not
launched: launching one raises a line naming the kernel. The modules go straight into
`sys.modules` after torch has cached its own "is triton installed" answer (False here), so torch
never takes this for a real Triton (inductor, torch.library's triton ops).
"""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types


class NotCompiled:
    """A kernel that was defined but cannot run: there is no Triton backend on a CPU rank."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError(f"Triton kernel {self.__name__} cannot run on the CPU stand-in (no Triton "
                                  "backend); turn off the MindSpeed switch that uses it for the rehearsal")

    __call__ = _refuse

    def __getitem__(self, grid):
        return self._refuse


def jit(fn=None, **options):
    return NotCompiled(fn) if fn is not None else NotCompiled


def _decorator(*args, **kwargs):
    return lambda fn: fn if isinstance(fn, NotCompiled) else NotCompiled(fn)


class Config:
    def __init__(self, kwargs=None, num_warps=4, num_stages=2, **options):
        self.kwargs, self.num_warps, self.num_stages = kwargs or {}, num_warps, num_stages


class _Placeholder:
    """Any `tl.<name>` (dtypes, intrinsics) at module level: a named object usable as an annotation."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"triton.language.{self.name} (stand-in)"

    def __call__(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return _Placeholder(f"{self.name}.{name}")


def _module(name: str, placeholders: bool = False, **attrs) -> types.ModuleType:
    """A module of the stand-in; `placeholders`: any other public name is a _Placeholder (triton.language's
    dtypes and intrinsics), else a missing name is an AttributeError (so `triton.runtime.driver.active`
    fails and MindSpeed's Triton utilities fall back to the CPU, as on a machine without a GPU)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)

    def missing(attr: str):
        if placeholders and not attr.startswith("__"):
            return _Placeholder(attr)
        raise AttributeError(f"module {name} (stand-in) has no attribute {attr}")

    module.__getattr__ = missing
    return module


class constexpr:  # noqa: N801 (triton's name)
    def __init__(self, value=None):
        self.value = value


def install() -> None:
    """Put the stand-in into sys.modules, once torch has decided that Triton is absent."""
    if "triton" in sys.modules:
        return
    from torch.utils import _triton

    _triton.has_triton_package()  # cached: False, before the stand-in exists
    _triton.has_triton()
    language = _module("triton.language", placeholders=True, constexpr=constexpr)
    extra = _module("triton.language.extra", libdevice=_module("triton.language.extra.libdevice", placeholders=True))
    language.extra = extra
    runtime = _module("triton.runtime", driver=_module("triton.runtime.driver"))
    triton = _module("triton", jit=jit, autotune=_decorator, heuristics=_decorator, Config=Config,
                     cdiv=lambda a, b: -(-a // b), next_power_of_2=lambda n: 1 << max(0, math.ceil(math.log2(n))),
                     language=language, runtime=runtime, utils=_module("triton.utils"), __version__="0.0.0+stand-in")
    for module in (triton, language, extra, extra.libdevice, runtime, runtime.driver, triton.utils):
        sys.modules[module.__name__] = module
