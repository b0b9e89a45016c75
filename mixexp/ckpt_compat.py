"""What makes one checkpoint load into any layout, layer spec and kind of Megatron optimizer.

- Optimizer state is keyed by model keys (`optimizer.state.exp_avg.<model key>`)
  and never prefixed by Megatron's optimizer chaining, which differs by layout
  (one optimizer at ep=1, a dense and an expert one at ep>1).
- Non-tensor optimizer state (param groups) is taken from the running optimizer,
  never stored: its structure also differs by layout. The learning rate and
  weight decay come back through the scheduler; Adam's step count is stored
  once and put back here.
- Keys a checkpoint lacks are looked up under their other names: the norm the
  Transformer Engine spec fuses into the next linear, the distributed
  optimizer's main parameters (`param`) that the plain fp16/bf16 optimizer calls
  `fp32_param` and the plain fp32 optimizer does not store (they are then the
  model weights), and `_extra_state` that local modules do not have.
"""

from __future__ import annotations

import torch
from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedBase

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
MODEL_ALIASES = {
    "decoder.layers.input_layernorm.weight": "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
    "decoder.layers.self_attention.linear_qkv.layer_norm_weight": "decoder.layers.input_layernorm.weight",
}
MAIN_PARAM_PREFIXES = ("optimizer.state.param.", "optimizer.state.fp32_param.")
STATE_PREFIX = "optimizer.state."


def _model_names(key: str) -> list[str]:
    return [key] + ([MODEL_ALIASES[key]] if key in MODEL_ALIASES else [])


def alternatives(key: str) -> list[str]:
    """Other names under which a checkpoint may hold the tensor `key` asks for, best first."""
    for prefix in MAIN_PARAM_PREFIXES:
        if key.startswith(prefix):
            names = _model_names(key[len(prefix):])
            others = [p + n for p in MAIN_PARAM_PREFIXES for n in names if p + n != key]
            return others + names
    if key.startswith(STATE_PREFIX):
        kind, _, model_key = key[len(STATE_PREFIX):].partition(".")
        return [f"{STATE_PREFIX}{kind}.{n}" for n in _model_names(model_key)[1:]]
    return _model_names(key)[1:]


def fit_keys(tree, stored: set[str]) -> tuple[list[str], bool]:
    """Rename requested tensors to the names the checkpoint has. Drop absent `_extra_state`s, and
    main parameters the checkpoint keeps only as model weights (the caller then copies the loaded
    weights into them). Returns (keys found under no name, whether main parameters were dropped)."""
    missing, dropped_main = [], False
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for name, item in list(items):
        if isinstance(item, (dict, list)):
            sub_missing, sub_dropped = fit_keys(item, stored)
            missing, dropped_main = missing + sub_missing, dropped_main or sub_dropped
            continue
        key = getattr(item, "key", None)
        if not isinstance(item, ShardedBase) or key in stored:
            continue
        found = next((alt for alt in alternatives(key) if alt in stored), None)
        if found and found.startswith(STATE_PREFIX) == key.startswith(STATE_PREFIX):
            item.key = found
        elif found and isinstance(tree, dict):  # a main parameter the checkpoint holds as model weights
            del tree[name]
            dropped_main = True
        elif key.endswith("_extra_state") and isinstance(tree, dict):
            del tree[name]
        else:
            missing.append(key)
    return missing, dropped_main


def localize(tree):
    """Every non-sharded leaf becomes a LocalNonpersistentObject: taken from this run, never stored."""
    if isinstance(tree, dict):
        return {k: localize(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [localize(v) for v in tree]
    if isinstance(tree, (ShardedBase, LocalNonpersistentObject)):
        return tree
    return LocalNonpersistentObject(tree)


def require_writer_dependencies() -> None:
    """megatron-core's checkpoint writer processes need psutil; without it they die silently and the
    save waits for them forever. Say so instead."""
    import importlib.util

    if importlib.util.find_spec("psutil") is None:
        raise RuntimeError("saving a checkpoint needs the psutil package (megatron-core's writer uses it): "
                           "pip install psutil")


def inner_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def torch_optimizers(optimizer) -> list:
    return [o.optimizer for o in inner_optimizers(optimizer) if getattr(o, "optimizer", None) is not None]


def allocate_state(optimizer) -> None:
    """Adam creates its state at the first step; the distributed optimizer's load path (without
    Apex or Transformer Engine) expects it, with a step count, to exist already."""
    for opt in inner_optimizers(optimizer):
        if getattr(opt, "init_state_fn", None) is not None and opt.optimizer is not None:
            opt.init_state_fn(opt.optimizer, opt.config)
            for state in opt.optimizer.state.values():
                state.setdefault("step", torch.tensor(0.0))
    _patch_distributed_optimizer()


def adam_step(optimizer) -> int:
    steps = {int(s["step"]) for opt in torch_optimizers(optimizer) for s in opt.state.values() if "step" in s}
    if len(steps) > 1:
        raise ValueError(f"optimizer parameters disagree on Adam's step count: {sorted(steps)}")
    return steps.pop() if steps else 0


def with_adam_step(optimizer, loaded: dict, step: int) -> dict:
    """Put Adam's step count where each kind of Megatron optimizer reads it in `load_state_dict`."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = inner_optimizers(optimizer)
    parts = [loaded] if len(inner) == 1 else [loaded[i] for i in range(len(inner))]
    for opt, sd in zip(inner, parts):
        if isinstance(opt, DistributedOptimizer):
            for group in sd["optimizer"]["param_groups"]:
                group["step"] = step
        else:  # FP32Optimizer: state at the top; Float16OptimizerWithFloat16Params: under "optimizer"
            state = sd["optimizer"]["state"] if "optimizer" in sd else sd["state"]
            state["common_step"] = torch.tensor(float(step))
    return loaded


def set_adam_step(optimizer, step: int) -> None:
    for opt in torch_optimizers(optimizer):
        for state in opt.state.values():
            state["step"] = torch.tensor(float(step))  # one tensor each: Adam increments it in place


_patched = False


def _patch_distributed_optimizer() -> None:
    """megatron-core 0.16.1, torch's Adam: loading the `fully_reshardable` state copies every state entry
    of a parameter from the checkpoint, `step` included, which it (rightly) does not hold per parameter:
    KeyError. Entries the checkpoint lacks keep their current value (`set_adam_step` then sets the step;
    main parameters dropped by `fit_keys` are refreshed from the loaded weights)."""
    global _patched
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if _patched:
        return
    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        current = self._get_main_param_and_optimizer_states(model_param)
        tensors = {**{k: v.clone() for k, v in current.items() if k not in tensors}, **tensors}
        return original(self, model_param, tensors)

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
    _patched = True
