"""Did MindSpeed do what the config asked? Checks that run in every NPU rank, real or rehearsed.

MindSpeed turns switches off without a word (a missing op makes its fused-permute feature set its
own flag to False), forces others on (its norm always fuses RMSNorm), and skips its Megatron-LM
patches when `megatron.training` does not import. So a rank checks, and ends the run with a
ConfigError (exit 2, one line) where the answer is no:

- `check_installed_patches()`: MindSpeed patched Megatron-LM's training code (argument parser);
- `check_switches(argv, args)`: after MindSpeed validated the arguments, every switch mixexp
  rendered on is still on;
- `OpCounter` / `check_ops(...)`: on step 1 (before its metrics are written), each fused-op switch
  ran its op, and a switch asked off ran none of it.
"""

from __future__ import annotations

import functools
from collections import Counter

from mixexp.errors import ConfigError

# The torch_npu / MindSpeed-JIT ops each switch makes MindSpeed call (any one of them counts).
SWITCH_OPS = {
    "use_fused_rmsnorm": ("npu_rms_norm",),
    "use_fused_swiglu": ("npu_swiglu",),
    "use_fused_rotary_pos_emb": ("npu_rotary_position_embedding",),
    "use_flash_attn": ("npu_fusion_attention",),
    "use_fused_moe_token_permute_and_unpermute": ("npu_moe_token_permute_with_routing_map",),
    "moe_grouped_gemm": ("npu_gmm", "npu_grouped_matmul"),
}
TORCH_NPU_OPS = ("npu_rms_norm", "npu_swiglu", "npu_fusion_attention", "npu_fusion_attention_grad",
                 "npu_moe_token_permute_with_routing_map", "npu_moe_token_unpermute_with_routing_map",
                 "_npu_moe_token_unpermute_with_routing_map", "npu_grouped_matmul", "npu_rotary_mul")


def check_installed_patches() -> None:
    """MindSpeed patches megatron.training only when it imports; without it (a missing dependency such as
    pydantic, or megatron-core alone) MindSpeed quietly runs as 'megatron-core only'."""
    try:
        import megatron.training  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"MindSpeed applied no Megatron-LM training patches: `import megatron.training` fails "
                          f"({type(exc).__name__}: {exc}); install Megatron-LM and its dependencies "
                          f"(make setup-mindspeed, docs/npu.md)") from None
    from mindspeed.patch_utils import MindSpeedPatchesManager

    patch = MindSpeedPatchesManager.patches_info.get("megatron.training.arguments.parse_args")
    if patch is None or not patch.is_applied:
        raise ConfigError("MindSpeed applied no Megatron-LM training patches (its parse_args patch is not in place): "
                          "import mindspeed.megatron_adaptor before anything under megatron")


def rendered_switches(argv: list[str]) -> list[str]:
    """The on/off flags that mixexp rendered on (`--use-fused-rmsnorm`), as argument names."""
    flags = [token for i, token in enumerate(argv) if token.startswith("--") and not token.startswith("--no-")
             and (i + 1 == len(argv) or argv[i + 1].startswith("--"))]
    return [flag[2:].replace("-", "_") for flag in flags]


def check_switches(argv: list[str], args) -> None:
    """Every switch rendered on is on in Megatron's validated (MindSpeed-patched) global args."""
    for name in rendered_switches(argv):
        if getattr(args, name, None) is False:
            raise ConfigError(f"--{name.replace('_', '-')} did not take effect: MindSpeed turned it off while "
                              f"validating the arguments (see its warning above); fix the cause or turn the switch off")


class OpCounter:
    """Counts calls of torch_npu's fused ops and of the ops MindSpeed's op builder loads (rope, gmm, ...),
    by wrapping them where MindSpeed looks them up (module attributes, the builder's loaded modules)."""

    def __init__(self):
        self.calls: Counter = Counter()

    def counted(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    def install(self) -> None:
        import torch_npu
        from mindspeed.op_builder.builder import MindSpeedOpBuilder

        for name in TORCH_NPU_OPS:
            if hasattr(torch_npu, name):
                setattr(torch_npu, name, self.counted(name, getattr(torch_npu, name)))
        load = MindSpeedOpBuilder.load
        counter = self

        def counted_load(builder, *args, **kwargs):
            return _CountedModule(load(builder, *args, **kwargs), counter)

        MindSpeedOpBuilder.load = counted_load


class _CountedModule:
    """A loaded op module whose functions count their calls."""

    def __init__(self, module, counter: OpCounter):
        self._module, self._counter = module, counter

    def __getattr__(self, name):
        value = getattr(self._module, name)
        return self._counter.counted(name, value) if callable(value) else value


def check_ops(calls: Counter, switches: dict[str, bool], reachable: dict[str, bool]) -> None:
    """After step 1: a switch on whose op never ran did nothing; a switch off whose op ran was forced on.

    `switches`: npu switch -> asked on; `reachable`: whether the model has the part the op serves
    (no experts: no permute or grouped GEMM)."""
    for switch, on in switches.items():
        ops = SWITCH_OPS[switch]
        ran = sum(calls[op] for op in ops)
        if not reachable.get(switch, True):
            continue
        if on and ran == 0:
            raise ConfigError(f"npu.{switch}=true did not take effect: MindSpeed never called {'/'.join(ops)} in "
                              f"step 1; the model bypasses the module MindSpeed patches for it")
        if not on and ran > 0:
            raise ConfigError(f"npu.{switch}=false did not take effect: MindSpeed called {ops[0]} {ran} times in "
                              f"step 1 anyway; drop the override (this MindSpeed always uses it)")
