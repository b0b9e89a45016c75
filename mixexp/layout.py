"""The parallel layout and every rule Megatron or MindSpeed would enforce after launch.

`Layout.from_config(cfg)` derives the degrees from the config and the cluster
size; `validate(cfg)` checks them against the model and the batch and raises
`LayoutError` with one line naming the values. Pure Python: runs before torch
is imported, so a bad layout is answered at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from mixexp.errors import ConfigError
from mixexp.run_checks import check_run_settings

CP_ALGOS = ("megatron_cp_algo", "ulysses_cp_algo", "hybrid_cp_algo")
DISPATCHERS = ("allgather", "alltoall")
PRECISIONS = ("fp32", "bf16")
RECOMPUTE = ("none", "selective", "full")


class LayoutError(ConfigError):
    """A configuration that cannot run; the message is one line naming the values."""


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1
    cp: int = 1
    dp: int = 1
    vpp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def name(self) -> str:
        degrees = (("tp", self.tp), ("pp", self.pp), ("ep", self.ep), ("cp", self.cp), ("dp", self.dp), ("vpp", self.vpp))
        parts = [f"{k}{v}" for k, v in degrees if v > 1]
        if self.etp != self.tp:  # expert tensor parallelism differs from Megatron's default (= tp)
            parts.insert(parts.index(f"ep{self.ep}") + 1 if self.ep > 1 else len(parts), f"etp{self.etp}")
        return "_".join(parts) or "single"

    def as_dict(self) -> dict[str, int]:
        """The summary.json `layout` object."""
        d = asdict(self)
        d.pop("etp")
        return d

    @classmethod
    def from_config(cls, cfg: Any) -> "Layout":
        p = cfg.parallel
        for key in ("tp", "pp", "ep", "cp", "vpp"):
            if p[key] < 1:
                raise LayoutError(f"parallel.{key}={p[key]} must be at least 1")
        etp = p.tp if p.etp is None else p.etp
        if etp < 1:
            raise LayoutError(f"parallel.etp={etp} must be at least 1")
        model_parallel = p.tp * p.pp * p.cp
        world = world_size(cfg)
        if world is None:  # CPU: the layout decides; experts fold over tp*cp*dp, so dp may need to grow
            dp = p.dp or (p.ep * etp) // math.gcd(p.tp * p.cp, p.ep * etp)
        elif p.dp is None:
            if world % model_parallel:
                raise LayoutError(
                    f"world size {world} (cluster.nnodes={cfg.cluster.nnodes} x {devices_per_node(cfg)} devices) "
                    f"is not divisible by tp*pp*cp={p.tp}*{p.pp}*{p.cp}={model_parallel}")
            dp = world // model_parallel
        else:
            dp = p.dp
            if model_parallel * dp != world:
                raise LayoutError(
                    f"tp*pp*cp*dp={p.tp}*{p.pp}*{p.cp}*{dp}={model_parallel * dp} does not equal the world size {world} "
                    f"(cluster.nnodes={cfg.cluster.nnodes} x {devices_per_node(cfg)} devices); drop parallel.dp to derive it")
        if dp < 1:
            raise LayoutError(f"parallel.dp={dp} must be at least 1")
        return cls(tp=p.tp, pp=p.pp, ep=p.ep, etp=etp, cp=p.cp, dp=dp, vpp=p.vpp)


def devices_per_node(cfg: Any) -> int | None:
    """Devices per node: the cluster's, else the hardware's; None on CPU (as many as needed)."""
    if cfg.cluster.devices_per_node is not None:
        return cfg.cluster.devices_per_node
    return cfg.hardware.devices_per_node


def world_size(cfg: Any) -> int | None:
    """The cluster's world size, or None when the layout decides it (CPU, one node)."""
    per_node = devices_per_node(cfg)
    return None if per_node is None else cfg.cluster.nnodes * per_node


def sequence_parallel(cfg: Any) -> bool:
    sp = cfg.parallel.sequence_parallel
    return cfg.parallel.tp > 1 if sp is None else bool(sp)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LayoutError(message)


def _divides(small_name: str, small: int, big_name: str, big: int) -> None:
    _check(big % small == 0, f"{small_name}={small} does not divide {big_name}={big}")


def _dp_source(cfg: Any, layout: Layout) -> str:
    """Where a derived dp came from, for messages that name it."""
    world = world_size(cfg)
    if cfg.parallel.dp is not None or world is None:
        return ""
    return (f" (dp={layout.dp} derived: cluster.nnodes={cfg.cluster.nnodes} x {devices_per_node(cfg)} devices per "
            f"node of hardware={cfg.hardware.name} / tp*pp*cp={world // layout.dp}; set cluster.devices_per_node "
            f"or parallel.dp)")


def validate(cfg: Any) -> Layout:
    """Derive the layout and check every rule; raises LayoutError on the first violation."""
    layout = Layout.from_config(cfg)
    m, p, t = cfg.model, cfg.parallel, cfg.train

    _check(t.precision in PRECISIONS, f"train.precision={t.precision} must be one of {'|'.join(PRECISIONS)}")
    _check(t.recompute in RECOMPUTE, f"train.recompute={t.recompute} must be one of {'|'.join(RECOMPUTE)}")
    _check(p.dispatcher in DISPATCHERS, f"parallel.dispatcher={p.dispatcher} must be one of {'|'.join(DISPATCHERS)}")
    _check(p.cp_algo in CP_ALGOS, f"parallel.cp_algo={p.cp_algo} must be one of {'|'.join(CP_ALGOS)}")
    _check(t.iters >= 1, f"train.iters={t.iters} must be at least 1")
    _check(t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size} must be at least 1")

    # Model shape.
    _divides("model.num_attention_heads", m.num_attention_heads, "model.hidden_size", m.hidden_size)
    _divides("model.num_query_groups", m.num_query_groups, "model.num_attention_heads", m.num_attention_heads)
    _check(1 <= m.moe_router_topk <= m.num_experts,
           f"model.moe_router_topk={m.moe_router_topk} must be between 1 and model.num_experts={m.num_experts}")

    # Tensor parallelism.
    _divides("parallel.tp", p.tp, "model.num_attention_heads", m.num_attention_heads)
    _divides("parallel.tp", p.tp, "model.num_query_groups", m.num_query_groups)
    _divides("parallel.tp", p.tp, "model.ffn_hidden_size", m.ffn_hidden_size)
    if p.tp > 1 and m.num_experts > 0:
        _check(sequence_parallel(cfg),
               f"parallel.tp={p.tp} with MoE needs sequence parallelism: drop parallel.sequence_parallel=false")

    # Pipeline parallelism and virtual stages.
    _check(p.pp <= m.num_layers, f"parallel.pp={p.pp} exceeds model.num_layers={m.num_layers}")
    if p.vpp > 1:
        _check(p.pp > 1, f"parallel.vpp={p.vpp} needs parallel.pp > 1 (got parallel.pp={p.pp})")
    _divides("parallel.pp*parallel.vpp", p.pp * p.vpp, "model.num_layers", m.num_layers)

    # Expert parallelism (Megatron folds experts over tp*cp*dp of each pipeline stage).
    _divides("parallel.ep", p.ep, "model.num_experts", m.num_experts)
    expert_ffn = m.moe_ffn_hidden_size or m.ffn_hidden_size
    _divides("parallel.etp", layout.etp, "the expert ffn size", expert_ffn)
    _check((layout.tp * layout.cp * layout.dp) % (layout.ep * layout.etp) == 0,
           f"parallel.ep*etp={layout.ep}*{layout.etp} does not divide tp*cp*dp="
           f"{layout.tp}*{layout.cp}*{layout.dp}={layout.tp * layout.cp * layout.dp}")
    if p.ep > 1:
        _check(m.num_experts > 0, f"parallel.ep={p.ep} needs a MoE model (model.num_experts=0)")

    # Context parallelism.
    if p.cp > 1:
        if p.cp_algo == "megatron_cp_algo":
            _divides("2*parallel.cp", 2 * p.cp, "train.seq_length", t.seq_length)
        elif p.cp_algo == "ulysses_cp_algo":
            _divides("parallel.cp", p.cp, "train.seq_length", t.seq_length)
            _divides("parallel.cp*parallel.tp", p.cp * p.tp, "model.num_attention_heads", m.num_attention_heads)
        else:  # hybrid: both constraints of the two algorithms it combines
            _divides("2*parallel.cp", 2 * p.cp, "train.seq_length", t.seq_length)
        if cfg.hardware.device != "npu":
            _check(p.cp_algo == "megatron_cp_algo",
                   f"parallel.cp_algo={p.cp_algo} runs only on NPU (MindSpeed); use parallel.cp_algo=megatron_cp_algo "
                   f"on hardware={cfg.hardware.name}")

    # Sequence parallelism splits each context-parallel chunk over the tp ranks.
    if sequence_parallel(cfg) and p.tp > 1:
        _divides("parallel.tp*parallel.cp", p.tp * p.cp, "train.seq_length", t.seq_length)

    # Batch.
    _check(t.global_batch_size % (t.micro_batch_size * layout.dp) == 0,
           f"train.micro_batch_size*dp={t.micro_batch_size * layout.dp} does not divide train.global_batch_size="
           f"{t.global_batch_size}{_dp_source(cfg, layout)}")
    microbatches = t.global_batch_size // (t.micro_batch_size * layout.dp)
    if p.vpp > 1:
        _divides("parallel.pp", p.pp, "the number of micro-batches (global_batch/(micro_batch*dp))", microbatches)

    # Hardware.
    if t.precision == "bf16":
        _check(cfg.hardware.bf16_supported, f"train.precision=bf16 is not supported on hardware={cfg.hardware.name}")
    threads, cpus = cfg.hardware.get("cpu_threads"), len(os.sched_getaffinity(0))
    if threads is not None and cfg.hardware.device == "cpu":  # torch caps a process at the CPUs it may use
        _check(1 <= threads <= cpus, f"hardware.cpu_threads={threads} must be between 1 and the {cpus} CPUs "
                                     f"this machine lets us use (or null: all of them)")
    if devices_per_node(cfg) is None and cfg.cluster.nnodes > 1:
        _divides("cluster.nnodes", cfg.cluster.nnodes, "the layout's world size", layout.world_size)
    _check(0 <= cfg.cluster.node_rank < cfg.cluster.nnodes,
           f"cluster.node_rank={cfg.cluster.node_rank} must be in [0, cluster.nnodes={cfg.cluster.nnodes})")
    if cfg.get("optim") is not None:  # a run's config (the planner validates layouts of bare model configs)
        check_run_settings(cfg, layout.world_size)
    return layout


def layout_name(cfg: Any) -> str:
    """The name of the layout a config runs (`tp2_pp2`), from its degrees, not from `parallel.name`:
    `parallel=single parallel.tp=3` is `tp3`. An invalid layout is named by the degrees it asks for."""
    try:
        return Layout.from_config(cfg).name
    except ConfigError:
        p = cfg.parallel
        return Layout(tp=p.tp, pp=p.pp, ep=p.ep, etp=p.tp if p.etp is None else p.etp, cp=p.cp,
                      dp=p.dp or 1, vpp=p.vpp).name


def distributed_optimizer_default(cfg: Any) -> bool:
    """On accelerators wherever it shards something, as Megatron's large runs use it: it splits the fp32
    master weights and Adam states over the data-parallel ranks, which with context parallelism are dp*cp
    (Megatron's dp-cp group); at dp*cp = 1 it is the plain optimizer. Off on CPU (CPU keeps its own)."""
    if cfg.hardware.device == "cpu":
        return False
    try:
        layout = Layout.from_config(cfg)
    except ConfigError:  # an invalid layout: validate() says why
        return False
    return layout.dp * layout.cp > 1
