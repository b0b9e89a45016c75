"""Compare the jobs of a sweep: `python -m mixexp.compare SWEEP_DIR [--wandb|--no-wandb]`.

Reads every job directory under SWEEP_DIR (a directory holding `.hydra/`; its
`summary.json` is the contract of DESIGN.md), ranks the jobs by tokens/s per
device, prints a table, and writes `comparison.csv` and `comparison.png` into
SWEEP_DIR. A job without summary.json (it crashed before writing one) is a
failed row with the reason "no summary.json".

W&B: with `--wandb` the table is also logged as a W&B Table in the sweep's
group; by default ("auto") that happens only when the sweep's jobs ran with
`logger=wandb`, so a console-only sweep never touches W&B.

rich and matplotlib are imported only when a table is printed or a chart drawn.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterable

import yaml

from mixexp import wandb_logger
from mixexp.layout import Layout

LAYOUT_KEYS = ("tp", "pp", "ep", "cp", "dp", "vpp")
# Copied from summary.json unchanged, in CSV column order.
METRIC_KEYS = ("tokens_per_sec_per_device", "tokens_per_sec", "step_time_s", "tflops_per_device", "mfu",
               "peak_memory_gb", "first_loss", "final_loss", "world_size", "params_total", "params_per_rank_max")
CSV_COLUMNS = ("rank", "label", "status", "tokens_per_sec_per_device", "ratio_to_best", *METRIC_KEYS[1:],
               "threads", *LAYOUT_KEYS, "error", "job", "overrides")


class CompareError(Exception):
    """Bad input (missing directory, no job directories); the message is one line."""


# ---------------------------------------------------------------------------- reading


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories holding `.hydra/` one or two levels under sweep_dir (or sweep_dir itself, a single run)."""
    if (sweep_dir / ".hydra").is_dir():
        return [sweep_dir]
    found = [p.parent for pattern in ("*/.hydra", "*/*/.hydra") for p in sweep_dir.glob(pattern) if p.is_dir()]
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort `2_tp2` before `10_pp2`: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _read_overrides(job_dir: Path) -> list[str]:
    try:
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def _read_summary(job_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = job_dir / "summary.json"
    if not path.is_file():
        return None, "no summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable summary.json: {e}"
    if not isinstance(summary, dict):
        return None, "unreadable summary.json: not a JSON object"
    return summary, None


def load_job(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One row: the summary's values unchanged, plus job, overrides, status and error."""
    summary, problem = _read_summary(job_dir)
    overrides = _read_overrides(job_dir)
    row: dict[str, Any] = {k: None for k in CSV_COLUMNS}
    row["job"] = job_dir.relative_to(sweep_dir).as_posix() if job_dir != sweep_dir else "."
    row["overrides"] = overrides
    if summary is None:
        row.update(status="failed", error=problem)
    else:
        row.update({k: summary.get(k) for k in METRIC_KEYS})
        threads = summary.get("cpu_threads")  # per rank, CPU runs only
        row["threads"] = sum(threads) if isinstance(threads, list) and all(map(_is_number, threads)) else None
        layout = summary.get("layout") or {}
        row.update({k: layout.get(k) for k in LAYOUT_KEYS})
        row["status"] = summary.get("status") or "failed"
        row["error"] = summary.get("error") or (None if row["status"] != "failed" else "failed (no error given)")
    row["label"] = _layout_label(row, overrides, job_dir)
    return row


def _layout_label(row: dict[str, Any], overrides: list[str], job_dir: Path) -> str:
    """The layout's name (`tp2_pp2`, `single`); without one (an invalid layout), the name of the layout the
    job asked for, which its directory carries after the job number (`0_tp3`), else its `parallel=` choice."""
    degrees = {k: row[k] for k in LAYOUT_KEYS if isinstance(row[k], int)}
    if degrees:  # summaries leave out etp: name it as Megatron's default (etp = tp)
        return Layout(**{"etp": degrees.get("tp", 1), **degrees}).name
    number, sep, requested = job_dir.name.partition("_")
    if number.isdigit() and sep and requested:
        return requested
    for key, value in map(_split_override, overrides):
        if key == "parallel":
            return value
    return job_dir.name


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _disambiguate(rows: list[dict[str, Any]]) -> None:
    """Where layout names repeat, add the overrides that differ within the repeats (then the job dir)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    for same in groups.values():
        if len(same) < 2:
            continue
        parsed = [dict(map(_split_override, r["overrides"])) for r in same]
        keys = sorted({k for p in parsed for k in p if not k.startswith("hydra.")})
        varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
        for row, p in zip(same, parsed):
            row["label"] = " ".join([row["label"], *(f"{k}={p[k]}" for k in varying if k in p)])
    labels = [r["label"] for r in rows]
    for row in rows:
        if labels.count(row["label"]) > 1:
            row["label"] = f"{row['label']} ({row['job']})"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def collect_rows(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows ranked by tokens/s per device; jobs without throughput after, failed jobs last."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise CompareError(f"no such directory: {sweep}")
    job_dirs = find_job_dirs(sweep)
    if not job_dirs:
        raise CompareError(f"no job directories (with .hydra/) under {sweep}")
    rows = [load_job(d, sweep) for d in job_dirs]
    _disambiguate(rows)

    def order(row: dict[str, Any]) -> tuple[int, float]:
        tps = row["tokens_per_sec_per_device"]
        if row["status"] == "failed":
            return 2, 0.0
        return (0, -tps) if _is_number(tps) else (1, 0.0)

    rows.sort(key=order)  # stable: job order breaks ties
    best = max((r["tokens_per_sec_per_device"] for r in rows
                if r["status"] != "failed" and _is_number(r["tokens_per_sec_per_device"])), default=None)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        tps = row["tokens_per_sec_per_device"]
        if best and row["status"] != "failed" and _is_number(tps):
            row["ratio_to_best"] = tps / best
    return rows


WORKLOAD_KEYS = ("model.name", "train.seq_length", "train.global_batch_size", "hardware.name", "train.precision",
                 "hardware.memory_gb")


def workload(job_dirs: Iterable[Path]) -> dict[str, list[Any]]:
    """What the jobs ran (model, sequence, batch, hardware, precision, device memory), from their
    .hydra/config.yaml: each key's distinct values, and the date of the first job."""
    from omegaconf import OmegaConf

    values: dict[str, list[Any]] = {k: [] for k in WORKLOAD_KEYS}
    dates = []
    for job_dir in job_dirs:
        path = job_dir / ".hydra" / "config.yaml"
        try:
            cfg = OmegaConf.load(path)
        except Exception:  # noqa: BLE001 - a job without a readable config tells nothing
            continue
        dates.append(path.stat().st_mtime)
        for key in WORKLOAD_KEYS:
            value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
            if value is not None and value not in values[key]:
                values[key].append(value)
    if dates:
        import datetime

        values["date"] = [datetime.date.fromtimestamp(min(dates)).isoformat()]
    return values


def workload_title(values: dict[str, list[Any]]) -> str:
    """`mixtral_tiny, seq 128, global batch 8, cpu, fp32, 2026-12-08` (a|b where the jobs differ)."""
    def show(key: str, prefix: str = "") -> str | None:
        found = values.get(key) or []
        return prefix + "|".join(map(str, found)) if found else None

    parts = [show("model.name"), show("train.seq_length", "seq "), show("train.global_batch_size", "global batch "),
             show("hardware.name"), show("train.precision"), show("date")]
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Any, binary: bool = False) -> None:
    """Call write(file) on a temporary file next to path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the results are for everyone on the cluster
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    def write(f: io.TextIOBase) -> None:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: " ".join(row[k]) if k == "overrides" else ("" if row[k] is None else row[k])
                        for k in CSV_COLUMNS})

    _atomic_write(path, write)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _is_number(value) else "-"


def threads_note(rows: list[dict[str, Any]]) -> str | None:
    """What the title says about CPU threads: the same for every job, or which jobs differ."""
    counts = {r["label"]: r["threads"] for r in rows if _is_number(r["threads"])}
    if not counts:
        return None
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} CPU threads per job"
    listed = ", ".join(f"{label} {n}" for label, n in counts.items())
    return f"CPU threads differ between jobs ({listed}): not comparable, set hardware.cpu_threads"


def render_table(rows: list[dict[str, Any]], title: str) -> Any:
    """A rich Table: one row per job, in rank order; failed jobs carry their reason.

    Dry runs (no throughput) add a column with the largest rank's parameter count.
    """
    from rich.table import Table

    dry = any(r["status"] == "dry_run" for r in rows)
    threads = any(_is_number(r["threads"]) for r in rows)
    numeric = ["tok/s/dev", "vs best", "step s", "TFLOP/s/dev", "MFU", "peak GB", "final loss"]
    numeric += ["threads"] if threads else []
    table = Table(title=title, title_justify="left")
    table.add_column("#")
    table.add_column("layout")
    for name in numeric + (["params/rank"] if dry else []):
        table.add_column(name, justify="right")
    table.add_column("status")
    for r in rows:
        ratio = _fmt(r["ratio_to_best"], ".2f") + ("x" if _is_number(r["ratio_to_best"]) else "")
        cells = [str(r["rank"]), r["label"], _fmt(r["tokens_per_sec_per_device"], ",.1f"), ratio,
                 _fmt(r["step_time_s"], ".3f"), _fmt(r["tflops_per_device"], ".3g"), _fmt(r["mfu"], ".1%"),
                 _fmt(r["peak_memory_gb"], ".2f"), _fmt(r["final_loss"], ".4f")]
        if threads:
            cells.append(_fmt(r["threads"], "d"))
        if dry:
            params = r["params_per_rank_max"]
            cells.append(f"{params / 1e9:.2f}B" if _is_number(params) else "-")
        bad = r["status"] in ("failed", "diverged", "does_not_fit")
        cells.append(f"{r['status'].replace('_', ' ')}: {_short(r['error'], 160)}" if bad else r["status"])
        table.add_row(*cells, style="red" if bad else ("bold" if r["rank"] == 1 else None))
    return table


def write_png(rows: list[dict[str, Any]], path: Path, title: str, capacity_gb: float | None = None) -> Any:
    """Two panels sharing the layout axis: tokens/s per device and peak memory per device, the device's
    capacity marked. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels = [textwrap.fill(r["label"], 32, break_on_hyphens=False) for r in rows][::-1]  # best at the top
    tps = [r["tokens_per_sec_per_device"] if _is_number(r["tokens_per_sec_per_device"]) else 0 for r in rows][::-1]
    mem = [r["peak_memory_gb"] if _is_number(r["peak_memory_gb"]) else 0 for r in rows][::-1]
    failed = [r["status"] == "failed" for r in rows][::-1]
    ratio = [r["ratio_to_best"] for r in rows][::-1]
    errors = [r["error"] or "" for r in rows][::-1]

    fig = Figure(figsize=(12, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax_tps, ax_mem = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    y = range(len(rows))
    colors = ["#bbbbbb" if f else "#1f77b4" for f in failed]
    ax_tps.barh(y, tps, color=colors)
    ax_tps.set_yticks(list(y), labels)
    for tick, f in zip(ax_tps.get_yticklabels(), failed):
        tick.set_color("#b00000" if f else "black")
    ax_tps.set_xlabel("tokens/s per device (higher is better)")
    top = max(tps, default=0) or 1
    for i, (v, f, q, err) in enumerate(zip(tps, failed, ratio, errors)):
        text = f"failed: {_short(err, 60)}" if f else (f"{v:,.1f}  ({q:.2f}x)" if _is_number(q) else
                                                       (f"does not fit: {_short(err, 60)}" if err else "no throughput"))
        ax_tps.text(v + top * 0.01, i, text, va="center", fontsize=9)
    ax_tps.set_xlim(0, top * 1.35)

    ax_mem.barh(y, mem, color=["#bbbbbb" if f else "#ff7f0e" for f in failed])
    ax_mem.set_xlabel("peak memory per device (GB)")
    top_mem = max(mem, default=0) or 1
    for i, v in enumerate(mem):
        if v:
            ax_mem.text(v + top_mem * 0.01, i, f"{v:.2f}", va="center", fontsize=9)
    if capacity_gb:
        ax_mem.axvline(capacity_gb, color="#b00000", linestyle="--", linewidth=1)
        ax_mem.text(capacity_gb, len(rows) - 0.5, f" device capacity {capacity_gb:g} GB", color="#b00000",
                    fontsize=8, va="bottom", ha="right" if capacity_gb >= top_mem else "left")
        top_mem = max(top_mem, capacity_gb)
    ax_mem.set_xlim(0, top_mem * 1.25)
    for ax in (ax_tps, ax_mem):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    return fig


# ---------------------------------------------------------------------------- W&B


def wandb_target(sweep_dir: Path, job_dirs: Iterable[Path]) -> dict[str, Any] | None:
    """project/group/entity/mode of the first job that ran with logger=wandb, else None."""
    from omegaconf import OmegaConf

    for job_dir in job_dirs:
        try:
            cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        except Exception:  # noqa: BLE001 - a job without a readable config tells nothing
            continue
        logger = {k: OmegaConf.select(cfg, f"logger.{k}", default=None, throw_on_resolution_failure=False)
                  for k in ("name", "project", "group", "entity", "mode")}
        if logger.pop("name") == "wandb":
            logger["project"] = logger["project"] or "mixexp"
            logger["group"] = logger["group"] or wandb_logger.sweep_group(sweep_dir)
            return logger
    return None


# ---------------------------------------------------------------------------- entry points


def compare(sweep_dir: str | os.PathLike, *, wandb: bool | None = None, show: bool = True) -> list[dict[str, Any]]:
    """Rank the sweep's jobs, print the table, write comparison.csv/.png; returns the rows.

    wandb: True logs the table to W&B, False never, None when the sweep used logger=wandb.
    Raises CompareError on bad input.
    """
    sweep = Path(sweep_dir)
    rows = collect_rows(sweep)
    name = "/".join(p for p in sweep.resolve().parts[-2:] if p != "/")
    what = workload(find_job_dirs(sweep))
    title = "; ".join(filter(None, [f"{name}: {len(rows)} jobs, ranked by tokens/s per device", threads_note(rows)]))
    title = "\n".join(filter(None, [title, workload_title(what)]))
    capacity = what["hardware.memory_gb"][0] if len(what["hardware.memory_gb"]) == 1 else None
    write_csv(rows, sweep / "comparison.csv")
    write_png(rows, sweep / "comparison.png", title, capacity)
    if show:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 200)
        console.print(render_table(rows, title))
        console.print(f"wrote {sweep / 'comparison.csv'} and {sweep / 'comparison.png'}")
    if wandb is not False:
        target = wandb_target(sweep, find_job_dirs(sweep))
        if target is None and wandb:
            target = {"project": "mixexp", "group": wandb_logger.sweep_group(sweep), "entity": None, "mode": None}
        if target is not None:
            wandb_logger.log_comparison_table(rows, png=sweep / "comparison.png", run_dir=str(sweep), **target)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixexp.compare", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (or one run directory)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--wandb", dest="wandb", action="store_true", default=None,
                       help="log the table to W&B (default: only if the sweep used logger=wandb)")
    group.add_argument("--no-wandb", dest="wandb", action="store_false", help="never log to W&B")
    args = parser.parse_args(argv)
    try:
        compare(args.sweep_dir, wandb=args.wandb)
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
