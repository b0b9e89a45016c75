"""Run megatron on Ascend NPUs: torch_npu, then MindSpeed's megatron_adaptor, then megatron.

MindSpeed patches Megatron by dotted path when `mindspeed.megatron_adaptor` is imported,
and it reads its switches (fused kernels, CP algorithm, MoE options, optimization level)
from `sys.argv` at that moment. So `prepare(cfg)` does, in this order:

1. check that torch_npu, CANN, MindSpeed and a Megatron-LM checkout are installed
   (one ConfigError naming what is missing and how to install it: docs/npu.md), and that
   torch is the one torch_npu was built for (`npu_versions`);
2. set the NPU environment (PYTORCH_NPU_ALLOC_CONF, HCCL timeouts) unless already set;
3. `import torch`, `import torch_npu` (its transfer_to_npu maps torch.cuda to the NPU);
4. put the config's Megatron/MindSpeed arguments (`mixexp.megatron_args.render`) into
   `sys.argv`, keeping `sys.argv[0]`;
5. `import mindspeed.megatron_adaptor`, before anything under `megatron.` is imported;
6. bind this rank to its NPU (LOCAL_RANK).

`finish()` runs after megatron is imported: it parses the same argv with Megatron's
(MindSpeed-patched) parser and installs them as Megatron's global args, which MindSpeed's
patched functions read through `megatron.training.get_args()`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Mapping

from mixexp.devices.npu_versions import check_torch_pairing
from mixexp.errors import ConfigError

CANN_DEFAULT_ROOT = "/usr/local/Ascend"
INSTALL = "install them with `pip install -e .[npu]` and the steps in docs/npu.md"
_prepared = False


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module without a spec
        return name in sys.modules


def cann_home(environ: Mapping[str, str] = os.environ, default_root: str = CANN_DEFAULT_ROOT) -> str | None:
    """The CANN toolkit: $ASCEND_TOOLKIT_HOME / $ASCEND_HOME_PATH (set by CANN's set_env.sh), else its default root."""
    for key in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        path = environ.get(key)
        if path and os.path.isdir(path):
            return path
    return default_root if os.path.isdir(default_root) else None


def megatron_lm_checkout(search_path: list[str] | None = None) -> str | None:
    """The sys.path entry holding Megatron-LM's `megatron/training` (megatron-core alone has no `training`).

    Looked up on the file system so nothing under `megatron` is imported before MindSpeed's adaptor.
    """
    for entry in sys.path if search_path is None else search_path:
        if os.path.isfile(os.path.join(entry or os.getcwd(), "megatron", "training", "__init__.py")):
            return entry or os.getcwd()
    return None


def missing_components(environ: Mapping[str, str] = os.environ, default_root: str = CANN_DEFAULT_ROOT,
                       search_path: list[str] | None = None) -> list[str]:
    """What the NPU path needs and cannot find, in install order; empty when all is there."""
    missing = []
    if not _module_found("torch_npu"):
        missing.append("torch_npu")
    if cann_home(environ, default_root) is None:
        missing.append(f"CANN (ASCEND_TOOLKIT_HOME, or {default_root})")
    if not _module_found("mindspeed"):
        missing.append("MindSpeed (the mindspeed package)")
    if megatron_lm_checkout(search_path) is None:
        missing.append("a Megatron-LM checkout (megatron.training on PYTHONPATH)")
    return missing


def check_installation(environ: Mapping[str, str] = os.environ, default_root: str = CANN_DEFAULT_ROOT,
                       search_path: list[str] | None = None) -> None:
    """Raise one ConfigError naming every missing piece; imports nothing (safe in the launcher)."""
    missing = missing_components(environ, default_root, search_path)
    if missing:
        raise ConfigError(f"hardware.device=npu needs {', '.join(missing)}: {INSTALL}")
    check_torch_pairing()


def npu_env(cfg) -> dict[str, str]:
    """The NPU environment of a run (launch.py sets the same defaults for the ranks it starts)."""
    timeout = str(cfg.train.collective_timeout_s)
    return {
        "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        "HCCL_CONNECT_TIMEOUT": timeout,
        "HCCL_EXEC_TIMEOUT": timeout,
        # Megatron requires it with sequence parallelism (ordered TP communication).
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    }


def prepare(cfg=None) -> None:
    """torch, torch_npu, the rendered argv, MindSpeed's adaptor: before any `megatron` import."""
    global _prepared
    if _prepared:
        return
    if cfg is None:
        raise ValueError("the npu adaptor needs the run's config: MindSpeed reads its switches from the rendered argv")
    check_installation()
    for key, value in npu_env(cfg).items():
        os.environ.setdefault(key, value)

    from mixexp.megatron_args import render

    argv = render(cfg)
    early = sorted(m for m in sys.modules if m.startswith("megatron."))
    if early:
        raise RuntimeError(f"{early[0]} was imported before mindspeed.megatron_adaptor; MindSpeed's patches "
                           "must come first: call mixexp.devices.prepare(\"npu\", cfg) before importing megatron")

    import torch
    import torch_npu  # noqa: F401  (registers the NPU backend and hccl)

    sys.argv = [sys.argv[0] if sys.argv else "mixexp", *argv]
    import mindspeed.megatron_adaptor  # noqa: F401  (reads sys.argv now, patches megatron)

    torch.npu.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _prepared = True


def finish() -> None:
    """Megatron's global args from the same argv, for MindSpeed's patched code (`get_args()`)."""
    from megatron.training import arguments, global_vars

    args = arguments.parse_args(ignore_unknown_args=True)
    try:
        arguments.validate_args(args)
    except AssertionError as exc:
        raise ConfigError(f"Megatron-LM rejected the rendered arguments: {exc}") from None
    global_vars.set_args(args)


def torch_device():
    import torch

    return torch.device("npu", torch.npu.current_device())
