"""Per-step throughput metrics and their warm-up-free averages. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThroughputModel:
    """What turns a step time into throughput figures for one run."""

    tokens_per_step: int  # global_batch_size * seq_length
    world_size: int
    flops_per_token: float
    peak_flops: float | None  # per device, for the run's precision

    def step_metrics(self, step_time_s: float) -> dict:
        tokens_per_sec = self.tokens_per_step / step_time_s
        per_device = tokens_per_sec / self.world_size
        tflops = per_device * self.flops_per_token / 1e12
        mfu = tflops * 1e12 / self.peak_flops if self.peak_flops else None
        return {
            "step_time_s": step_time_s,
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": per_device,
            "tflops_per_device": tflops,
            "mfu": mfu,
        }


def peak_flops(hardware, precision: str) -> float | None:
    """The hardware's peak FLOP/s per device at the run's precision (None when not configured)."""
    peak = hardware.peak_flops_bf16 if precision == "bf16" else hardware.peak_flops_fp32
    return peak or None


def steady_state(rows: list[dict], warmup_steps: int) -> list[dict]:
    """Rows after warm-up; all rows when the run was too short to have any."""
    after = [r for r in rows if r["step"] > warmup_steps]
    return after or rows


def average(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


RATE_KEYS = ("tokens_per_sec", "tokens_per_sec_per_device", "tflops_per_device", "mfu")


def rate_over_time(rows: list[dict], key: str) -> float | None:
    """A rate over several steps: the work done (rate x time, step by step) over the time it took.

    Not the mean of per-step rates, which over-weights fast steps: steps of 1 s and 3 s at 1024 tokens
    each are 512 tokens/s (2048 / 4 s), where the mean of 1024 and 341 would say 683. For a constant
    amount of work per step this is work / mean(step_time_s), whatever the engine logged.
    """
    timed = [r for r in rows if r.get(key) is not None and r.get("step_time_s")]
    if not timed:
        return None
    return sum(r[key] * r["step_time_s"] for r in timed) / sum(r["step_time_s"] for r in timed)


def summarize(rows: list[dict], warmup_steps: int) -> dict:
    """Averages over steady-state steps: the mean step time, and rates as work over that time."""
    steady = steady_state(rows, warmup_steps)
    out = {"step_time_s": average(steady, "step_time_s")}
    out.update({k: rate_over_time(steady, k) for k in RATE_KEYS})
    out["peak_memory_gb"] = max((r["memory_gb"] for r in rows if r.get("memory_gb") is not None), default=None)
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    out["first_loss"] = losses[0] if losses else None
    out["final_loss"] = losses[-1] if losses else None
    return out
