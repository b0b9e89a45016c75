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

A rehearsal (`hardware.rehearsal=true`, e.g. `hardware=ascend_rehearsal`) takes the same path on
CPU ranks: step 3 imports mixexp's CPU stand-in for torch_npu (`npu_standin/`, put first on
`sys.path` here and nowhere else), CANN is not needed, and the collectives run on gloo.
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
REHEARSAL_INSTALL = "make setup-mindspeed"
STANDIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npu_standin")
_prepared = False
_rehearsal = False
_argv: list[str] = []
_counter = None  # npu_checks.OpCounter, installed after MindSpeed's adaptor


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
                       search_path: list[str] | None = None, rehearsal: bool = False) -> list[str]:
    """What the NPU path needs and cannot find, in install order; empty when all is there.
    A rehearsal brings its own torch_npu (the CPU stand-in) and needs no CANN."""
    missing = []
    if not rehearsal and not _module_found("torch_npu"):
        missing.append("torch_npu")
    if not rehearsal and cann_home(environ, default_root) is None:
        missing.append(f"CANN (ASCEND_TOOLKIT_HOME, or {default_root})")
    if not _module_found("mindspeed"):
        missing.append("MindSpeed (the mindspeed package)")
    if megatron_lm_checkout(search_path) is None:
        missing.append("a Megatron-LM checkout (megatron.training on PYTHONPATH)")
    return missing


def check_installation(environ: Mapping[str, str] = os.environ, default_root: str = CANN_DEFAULT_ROOT,
                       search_path: list[str] | None = None, rehearsal: bool = False) -> None:
    """Raise one ConfigError naming every missing piece; imports nothing (safe in the launcher)."""
    missing = missing_components(environ, default_root, search_path, rehearsal)
    if missing and rehearsal:
        raise ConfigError(f"hardware.rehearsal=true needs {', '.join(missing)}: {REHEARSAL_INSTALL}")
    if missing:
        raise ConfigError(f"hardware.device=npu needs {', '.join(missing)}: {INSTALL}")
    if rehearsal and _module_found("torch_npu"):
        raise ConfigError("hardware.rehearsal=true on a machine with a real torch_npu: the CPU stand-in never "
                          "shadows it; run with hardware=ascend_910b there, or rehearse where torch_npu is absent")
    if not rehearsal:
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
    global _rehearsal
    _rehearsal = bool(cfg.hardware.get("rehearsal", False))
    check_installation(rehearsal=_rehearsal)
    for key, value in npu_env(cfg).items():
        os.environ.setdefault(key, value)

    from mixexp.megatron_args import render

    argv = render(cfg)
    early = sorted(m for m in sys.modules if m.startswith("megatron."))
    if early:
        raise RuntimeError(f"{early[0]} was imported before mindspeed.megatron_adaptor; MindSpeed's patches "
                           "must come first: call mixexp.devices.prepare(\"npu\", cfg) before importing megatron")

    import torch
    if _rehearsal:
        sys.path.insert(0, STANDIN_DIR)
    import torch_npu  # noqa: F401  (registers the NPU backend and hccl)

    sys.argv = [sys.argv[0] if sys.argv else "mixexp", *argv]
    import mindspeed.megatron_adaptor  # noqa: F401  (reads sys.argv now, patches megatron)

    global _argv, _counter
    from mixexp.devices.npu_checks import OpCounter

    if _rehearsal:
        from mixexp.devices.npu_rehearsal import register_cpu_kernels, register_jit_ops, register_triton_ops
        register_jit_ops()
        register_triton_ops()
        register_cpu_kernels()
    _argv, _counter = argv, OpCounter()
    _counter.install()
    torch.npu.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _prepared = True


def finish() -> None:
    """Megatron's global args from the same argv, for MindSpeed's patched code (`get_args()`); then the
    check that MindSpeed patched Megatron-LM and kept every switch that was rendered on."""
    from mixexp.devices import npu_checks

    npu_checks.check_installed_patches()
    from megatron.training import arguments, global_vars

    args = arguments.parse_args(ignore_unknown_args=True)
    try:
        arguments.validate_args(args)
    except AssertionError as exc:
        raise ConfigError(f"Megatron-LM rejected the rendered arguments: {exc}") from None
    global_vars.set_args(args)
    npu_checks.check_switches(_argv, args)
    if _rehearsal:
        from mixexp.devices import cpu

        cpu.patch_gloo_collectives()


def after_first_step(cfg) -> None:
    """Each fused-op switch ran its op in step 1, and none asked off did (npu_checks.check_ops)."""
    from mixexp.devices.npu_checks import SWITCH_OPS, check_ops
    from mixexp.megatron_args import derived_switches
    from mixexp.npu_config import npu_config

    npu = npu_config(cfg)
    switches = {name: bool(getattr(npu, name)) for name in SWITCH_OPS if name != "moe_grouped_gemm"}
    switches["moe_grouped_gemm"] = derived_switches(cfg, npu)["moe_grouped_gemm"]
    moe = cfg.model.num_experts > 0
    reachable = {"use_fused_moe_token_permute_and_unpermute": moe and cfg.parallel.dispatcher == "alltoall",
                 "moe_grouped_gemm": moe}
    check_ops(_counter.calls, switches, reachable)


def peak_memory_gb() -> float:
    import torch

    if _rehearsal:
        from mixexp.devices import cpu
        return cpu.peak_memory_gb()
    return torch.npu.max_memory_allocated() / 2**30


def stack() -> dict:
    """What ran: versions, MindSpeed's source commit, torch_npu, and the MindSpeed features applied."""
    import torch
    import torch_npu
    from megatron.core import package_info
    from megatron.training import get_args
    from mindspeed.features_manager.features_manager import MindSpeedFeaturesManager

    from mixexp.devices import npu_versions as versions

    args = get_args()

    def applied(feature) -> bool:
        # MindSpeed core_r0.16.0's fused-permute feature returns a tuple `(on, None)`, which is always truthy.
        answer = feature.is_need_apply(args)
        return bool(answer[0] if isinstance(answer, tuple) else answer)

    features = sorted({f.feature_name for f in MindSpeedFeaturesManager.FEATURES_LIST
                       if not f.default_patches and applied(f)})
    return {"torch": torch.__version__, "megatron_core": package_info.__version__,
            "mindspeed": versions.mindspeed_version(), "mindspeed_commit": versions.mindspeed_commit(),
            "megatron_lm": versions.megatron_lm_version(), "torch_npu": torch_npu.__version__,
            "mindspeed_features": features}


def torch_device():
    import torch

    if _rehearsal:
        return torch.device("cpu")
    return torch.device("npu", torch.npu.current_device())
