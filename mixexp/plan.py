"""Layout planner: every valid layout for a model and a cluster, ranked by predicted throughput.

    python -m mixexp.plan model=mixtral_8x7b hardware=ascend_910b cluster.nnodes=8 \
        train.seq_length=32768 train.global_batch_size=64 [plan.top_n=10 plan.explain=true \
        plan.output=plan.json plan.emit_sweep=NAME plan.search=false]

The search space is every (tp, pp, cp, ep, etp, vpp, micro batch, recompute)
with tp, pp, cp, ep and etp dividing the world size, tp*pp*cp dividing it too
(dp is the quotient), vpp dividing the number of layers, micro batches
1..plan.max_micro_batch_size and recompute from plan.recompute. Each candidate
goes through `layout.validate` (the rules live there only); the rejected ones
are reported by rule. The valid ones get exact parameters per rank (the meta
model), memory per device (`memory.py`, worst of the first and last pipeline
stage: middle stages hold fewer parameters and fewer micro-batches than the
first) and a predicted step time (`timing.py`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from mixexp.config import RootConfig
from mixexp.errors import ConfigError
from mixexp.layout import Layout, LayoutError, validate, world_size

SECTIONS = ("model", "parallel", "train", "hardware", "cluster")
TIGHT_HEADROOM = 0.05  # a layout that leaves less of the device's memory free is flagged


@dataclass
class PlanSettings:
    search: bool = True  # false: evaluate exactly the composed layout
    top_n: int = 10
    output: Optional[str] = None  # JSON file: one object per evaluated layout
    emit_sweep: Optional[str] = None  # write the top N as SWEEP_DIR/sweep/NAME.yaml
    # Where emitted sweeps go: a user directory, never the package (train.py searches ./conf_local).
    sweep_dir: str = "conf_local"
    explain: bool = False  # time and memory breakdown of the top layouts
    max_micro_batch_size: int = 4
    recompute: list[str] = field(default_factory=lambda: ["none", "selective", "full"])
    # Searched layouts use the distributed optimizer (null: as parallel.distributed_optimizer).
    distributed_optimizer: Optional[bool] = True
    # The table and the sweep show the best (micro batch, recompute) of each parallel layout.
    distinct: bool = True


@dataclass
class PlanConfig(RootConfig):
    plan: PlanSettings = field(default_factory=PlanSettings)


ConfigStore.instance().store(name="plan_schema", node=PlanConfig)


class Node(dict):
    """A plain config section with attribute access: validate() on it is ~100x faster than on OmegaConf."""

    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value

    @classmethod
    def wrap(cls, value):
        if isinstance(value, dict):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        return value

    def copy_with(self, **sections) -> "Node":
        out = Node(self)
        for name, changes in sections.items():
            out[name] = Node({**self[name], **changes})
        return out


def plain(cfg) -> Node:
    return Node.wrap({s: OmegaConf.to_container(cfg[s], resolve=True) for s in SECTIONS})


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(base: Node, world: int, plan):
    """Every point of the search space but recompute (valid or not), as configs."""
    m, mbs_max, first_recompute = base.model, plan.max_micro_batch_size, plan.recompute[0]
    do = base.parallel.distributed_optimizer if plan.distributed_optimizer is None else plan.distributed_optimizer
    for tp in divisors(world):
        for pp in divisors(world // tp):
            for cp in divisors(world // (tp * pp)):
                for ep in divisors(world):
                    for etp in divisors(world):
                        for vpp in divisors(m.num_layers):
                            for mbs in range(1, mbs_max + 1):
                                yield base.copy_with(
                                    parallel=dict(tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, vpp=vpp, dp=world // (tp * pp * cp),
                                                  distributed_optimizer=do),
                                    train=dict(micro_batch_size=mbs, recompute=first_recompute))


def exclusion_class(message: str) -> str:
    """The rule behind a LayoutError message: its values blanked out."""
    return re.sub(r"=[^\s,;()]+", "=…", message)


@dataclass
class Evaluated:
    cfg: Node
    layout: Layout
    params_by_stage: list[int]
    memory: dict  # breakdown of the stage with the highest total
    time: object  # timing.StepTime

    @property
    def fits(self) -> bool:
        return self.memory["total_gb"] <= self.cfg.hardware.memory_gb

    @property
    def tight(self) -> bool:
        """Fits with less than TIGHT_HEADROOM of the device's memory to spare: the estimate's error, allocator
        fragmentation or a longer sample can push it over."""
        return self.fits and self.memory["total_gb"] > (1 - TIGHT_HEADROOM) * self.cfg.hardware.memory_gb

    @property
    def name(self) -> str:
        return layout_name(self.cfg, self.layout)

    def record(self) -> dict:
        p, t = self.cfg.parallel, self.cfg.train
        return {
            "name": self.name,
            "layout": {**self.layout.as_dict(), "etp": self.layout.etp},
            "micro_batch_size": t.micro_batch_size,
            "recompute": t.recompute,
            "distributed_optimizer": bool(p.distributed_optimizer),
            "params_per_rank_max": max(self.params_by_stage),
            "params_per_stage": self.params_by_stage,
            "memory_gb_per_device": self.memory["total_gb"],
            "memory": self.memory,
            "fits": self.fits,
            "tight": self.tight,
            "predicted_step_time_s": self.time.step_time_s,
            "predicted_tokens_per_sec_per_device": self.time.tokens_per_sec_per_device,
            "predicted_mfu": self.time.mfu,
            "predicted_tflops_per_device": self.time.tflops_per_device,
            "time": self.time.as_dict(),
        }


def layout_name(cfg, layout: Layout) -> str:
    name = layout.name + f"_mbs{cfg.train.micro_batch_size}"
    if cfg.train.recompute != "none":
        name += f"_{cfg.train.recompute}"
    return name


def evaluate(cfg: Node, layout: Layout, params_by_stage: list[int]) -> Evaluated:
    from mixexp.memory import peak_memory
    from mixexp.timing import predict_step

    return Evaluated(cfg, layout, params_by_stage, peak_memory(cfg, layout, params_by_stage),
                     predict_step(cfg, layout, params_by_stage))


@dataclass
class PlanResult:
    ranked: list[Evaluated]  # fitting first, by predicted tokens/s/device; then the rest by memory
    excluded: dict[str, tuple[int, str]]  # rule -> (candidates it rejected, one of their messages)
    candidates: int


def count_params(base: Node, layouts: list[Layout]) -> dict[Layout, list[int]]:
    from mixexp.param_counts import stage_counts

    return stage_counts(dict(base), layouts)


def rank(evaluated: list[Evaluated]) -> list[Evaluated]:
    """Fitting layouts first, fastest first; then the others, smallest first.

    Throughputs within 3 significant digits are a tie (finer is noise for an analytical model),
    broken by less memory, then by less communication.
    """
    def key(ev):
        speed = float(f"{ev.time.tokens_per_sec_per_device:.3g}") if ev.fits else 0.0
        return not ev.fits, -speed, round(ev.memory["total_gb"], 3), ev.time.communication_s
    return sorted(evaluated, key=key)


def search(base: Node, plan) -> PlanResult:
    world = world_size(base)
    if world is None:
        raise ConfigError(f"the planner needs a world size: set cluster.devices_per_node "
                          f"(hardware={base.hardware.name} does not fix devices per node)")
    valid, excluded, points = [], {}, 0
    recompute, rejected, multiplicity = None, [], len(plan.recompute)
    for cfg in candidates(base, world, plan):
        points += multiplicity
        try:
            layout = validate(cfg)
        except LayoutError as exc:
            _exclude(excluded, str(exc), multiplicity)
            continue
        if recompute is None:  # recompute changes no layout rule but its own spelling: check each value once
            recompute, rejected = _split_recompute(cfg, plan.recompute)
        valid += [(cfg.copy_with(train=dict(recompute=value)), layout) for value in recompute]
        for message in rejected:
            _exclude(excluded, message, 1)
    counts = count_params(base, sorted({layout for _, layout in valid}, key=lambda lay: tuple(lay.__dict__.values())))
    return PlanResult(rank([evaluate(cfg, layout, counts[layout]) for cfg, layout in valid]), excluded, points)


def _split_recompute(cfg, values) -> tuple[list[str], list[str]]:
    """(the valid recompute values, the error messages of the others) for a valid layout."""
    valid, rejected = [], []
    for value in values:
        try:
            validate(cfg.copy_with(train=dict(recompute=value)))
            valid.append(value)
        except LayoutError as exc:
            rejected.append(str(exc))
    return valid, rejected


def _exclude(excluded: dict, message: str, count: int) -> None:
    rule = exclusion_class(message)
    seen, example = excluded.get(rule, (0, message))
    excluded[rule] = (seen + count, example)


def single(base: Node) -> PlanResult:
    layout = validate(base)
    counts = count_params(base, [layout])
    return PlanResult([evaluate(base, layout, counts[layout])], {}, 1)


def top(result: PlanResult, n: int, distinct: bool) -> list[Evaluated]:
    """The best n; with `distinct`, the best (micro batch, recompute) of each parallel layout only."""
    chosen, seen = [], set()
    for ev in result.ranked:
        key = ev.layout if distinct else (ev.layout, ev.cfg.train.micro_batch_size, ev.cfg.train.recompute)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(ev)
        if len(chosen) == n:
            break
    return chosen


def run_sweep_command(name: str, sweep_dir: Path) -> str:
    """How to run an emitted sweep: train.py searches ./conf_local; any other directory is named."""
    if sweep_dir == Path("conf_local"):
        return f"python train.py +sweep={name}, from this directory"
    return f"python train.py +sweep={name} 'hydra.searchpath=[file://{sweep_dir.resolve()}]'"


def run_plan(cfg) -> int:
    """The Hydra job behind `python -m mixexp.plan`; returns the exit code."""
    from mixexp import plan_report

    base, settings = plain(cfg), Node.wrap(OmegaConf.to_container(cfg.plan, resolve=True))
    try:
        result = search(base, settings) if settings.search else single(base)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    best = top(result, settings.top_n, settings.distinct and settings.search)
    plan_report.print_plan(base, result, best, explain=settings.explain)
    if settings.output:
        path = Path(settings.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([dict(rank=i + 1, **ev.record()) for i, ev in enumerate(result.ranked)], indent=1))
        print(f"[plan] {len(result.ranked)} layouts written to {path}")
    if settings.emit_sweep:
        fitting = [ev for ev in best if ev.fits]
        if not fitting:
            print("error: no layout fits in memory; no sweep written", file=sys.stderr)
            return 1
        sweep_dir = Path(settings.sweep_dir)
        path = plan_report.emit_sweep(settings.emit_sweep, base, fitting, sweep_dir)
        print(f"[plan] sweep written: {path}  (run: {run_sweep_command(settings.emit_sweep, sweep_dir)})")
    return 0


if __name__ == "__main__":
    from mixexp.cli import hydra_entry

    hydra_entry("plan", "mixexp.plan:run_plan")
