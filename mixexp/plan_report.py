"""What the planner shows and writes: the ranked table, the exclusions, the breakdowns, a sweep."""

from __future__ import annotations

import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mixexp.layout import devices_per_node


def workload(cfg) -> str:
    m, t, c = cfg.model, cfg.train, cfg.cluster
    per_node = devices_per_node(cfg)
    return (f"{m.name} on {c.nnodes} x {per_node} {cfg.hardware.name} ({cfg.hardware.memory_gb} GB), "
            f"seq {t.seq_length}, global batch {t.global_batch_size}, {t.precision}")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _fits(ev) -> str:
    if not ev.fits:
        return "NO"
    return f"tight ({100 * (1 - ev.memory['total_gb'] / ev.cfg.hardware.memory_gb):.1f}% free)" if ev.tight else "yes"


def layouts_table(best: list, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("#", "tp", "pp", "ep", "etp", "cp", "dp", "vpp", "mbs", "recompute", "params/rank",
                "GB/device", "fits", "step s", "tok/s/dev", "MFU"):
        table.add_column(col, justify="left" if col in ("recompute", "fits") else "right")
    for i, ev in enumerate(best, 1):
        lay, t, time = ev.layout, ev.cfg.train, ev.time
        table.add_row(str(i), *(str(v) for v in (lay.tp, lay.pp, lay.ep, lay.etp, lay.cp, lay.dp, lay.vpp)),
                      str(t.micro_batch_size), t.recompute, f"{max(ev.params_by_stage) / 1e9:.2f}B",
                      f"{ev.memory['total_gb']:.1f}", _fits(ev), f"{time.step_time_s:.2f}",
                      f"{time.tokens_per_sec_per_device:,.0f}", _pct(time.mfu))
    return table


def explain_table(ev, rank: int) -> Table:
    """Where the step time and the memory of one layout go."""
    t, mem = ev.time, ev.memory
    table = Table(title=f"#{rank} {ev.name}: time model (slowest stage) and memory (stage {mem['stage']})",
                  title_justify="left")
    for col in ("time", "s", "memory", "GB"):
        table.add_column(col, justify="right" if col in ("s", "GB") else "left")
    rows_t = [("compute / micro-batch", t.compute_s), ("recompute / micro-batch", t.recompute_s),
              ("TP/SP collectives / mb", t.tp_comm_s), ("EP all-to-all / mb", t.ep_comm_s),
              ("CP ring, exposed / mb", t.cp_comm_s), ("PP send/recv / mb", t.pp_comm_s),
              ("= one micro-batch", t.microbatch_s), (f"x {t.microbatches} micro-batches + bubble", t.pipeline_s),
              ("  of which bubble", t.bubble_s), ("DP grad/param comm", t.dp_comm_s),
              ("  exposed (not overlapped)", t.dp_exposed_s), ("= step", t.step_time_s)]
    rows_m = [("weights", mem["weights_gb"]), ("gradients (fp32)", mem["grads_gb"]),
              ("optimizer (as configured)", mem["optimizer_gb"]),
              ("  distributed / replicated", f"{mem['optimizer_gb_distributed']:.2f} / {mem['optimizer_gb_replicated']:.2f}"),
              (f"activations ({mem['layers_in_flight']} layers in flight)", mem["activations_gb"]),
              ("transient (layer bwd, MoE buffers, logits)", mem["transient_gb"]),
              ("runtime (context, workspace)", mem["runtime_gb"]), ("= total", mem["total_gb"])]
    for i in range(max(len(rows_t), len(rows_m))):
        a = rows_t[i] if i < len(rows_t) else ("", "")
        b = rows_m[i] if i < len(rows_m) else ("", "")
        table.add_row(a[0], a[1] if isinstance(a[1], str) else f"{a[1]:.3f}",
                      b[0], b[1] if isinstance(b[1], str) else f"{b[1]:.2f}")
    return table


def print_plan(cfg, result, best: list, explain: bool = False, console: Console | None = None) -> None:
    console = console or Console(width=160)
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    fitting = sum(ev.fits for ev in result.ranked)
    say(f"[plan] {workload(cfg)}")
    say(f"[plan] {result.candidates:,} layout(s) considered, {len(result.ranked):,} valid, {fitting:,} fit in memory")
    console.print(layouts_table(best, "Best predicted layouts" if len(best) > 1 else "Layout"))
    for rule, (count, example) in sorted(result.excluded.items(), key=lambda kv: -kv[1][0]):
        say(f"{count:>9,} layouts: {example}" + (" (and alike)" if count > 1 else ""))
    unfit = [ev for ev in result.ranked if not ev.fits]
    if unfit:
        need = min(ev.memory["total_gb"] for ev in unfit)
        say(f"{len(unfit):>9,} layouts: need more than the {cfg.hardware.memory_gb:g} GB of a device "
            f"(from {need:.1f} GB)")
    if explain:
        for i, ev in enumerate(best[:3], 1):
            console.print(explain_table(ev, i))


def _layout_yaml(name: str, ev, comment: str) -> str:
    lay, p, t = ev.layout, ev.cfg.parallel, ev.cfg.train
    return "\n".join([
        "# @package _global_",
        f"# {comment}",
        "defaults:",
        "  - /parallel/parallel_schema@parallel",
        "  - _self_",
        "",
        "parallel:",
        f"  name: {name}",
        f"  tp: {lay.tp}", f"  pp: {lay.pp}", f"  ep: {lay.ep}", f"  etp: {lay.etp}", f"  cp: {lay.cp}",
        f"  vpp: {lay.vpp}",
        f"  cp_algo: {p.cp_algo}",
        f"  dispatcher: {p.dispatcher}",
        f"  distributed_optimizer: {str(bool(p.distributed_optimizer)).lower()}",
        "",
        "train:",
        f"  micro_batch_size: {t.micro_batch_size}",
        f"  recompute: {t.recompute}",
        "",
    ])


def emit_sweep(name: str, cfg, best: list, sweep_dir: Path) -> Path:
    """SWEEP_DIR/sweep/NAME.yaml runs the layouts, each a `parallel` option in SWEEP_DIR/parallel/NAME_<i>.yaml.

    A layout is a tuple (tp, pp, ..., micro batch, recompute); Hydra's sweeper multiplies
    the values of separate keys, so each tuple becomes one `parallel` option (with the
    `_global_` package, so it also sets its micro batch and recompute).
    """
    m, t, c, hw = cfg.model, cfg.train, cfg.cluster, cfg.hardware
    (sweep_dir / "sweep").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "parallel").mkdir(parents=True, exist_ok=True)
    options, summary = [], []
    for i, ev in enumerate(best, 1):
        option = f"{name}_{i}"
        prediction = (f"{ev.time.tokens_per_sec_per_device:,.0f} tokens/s/device, MFU {_pct(ev.time.mfu)}, "
                      f"{ev.memory['total_gb']:.1f} GB/device, step {ev.time.step_time_s:.2f} s")
        (sweep_dir / "parallel" / f"{option}.yaml").write_text(
            _layout_yaml(ev.name, ev, f"Layout {i} of sweep {name} (mixexp.plan): predicted {prediction}."))
        options.append(option)
        summary.append(f"#   {i}. {ev.name}: {prediction}")
    cluster = [f"  nnodes: {c.nnodes}"] + ([f"  devices_per_node: {c.devices_per_node}"] if c.devices_per_node else [])
    text = "\n".join([
        "# @package _global_",
        f"# Emitted by `python -m mixexp.plan` on {datetime.date.today()}: the best predicted layouts for",
        f"# {workload(cfg)}.",
        *summary,
        f"#   python train.py +sweep={name} hydra/launcher=...   (on the cluster)",
        f"#   python train.py +sweep={name} train.dry_run=true   (anywhere: sizes and validation)",
        "defaults:",
        f"  - override /model: {m.name}",
        f"  - override /hardware: {hw.name}",
        "",
        "cluster:",
        *cluster,
        "",
        "train:",
        f"  seq_length: {t.seq_length}",
        f"  global_batch_size: {t.global_batch_size}",
        f"  precision: {t.precision}",
        "",
        "logger:",
        f"  group: {name}",
        "",
        "hydra:",
        "  mode: MULTIRUN",
        "  sweep:",
        f"    dir: multirun/{name}/${{now:%Y-%m-%d_%H-%M-%S}}",
        "  sweeper:",
        "    params:",
        f"      parallel: {','.join(options)}",
        "",
    ])
    path = sweep_dir / "sweep" / f"{name}.yaml"
    path.write_text(text)
    return path
