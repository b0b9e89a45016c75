"""engine=megatron_lm: run a Megatron-LM / MindSpeed-LLM checkout's pretrain_gpt.py, report like the native loop.

    python train.py engine=megatron_lm engine.path=/path/to/MindSpeed-LLM +experiment=mixtral_8x7b_seed

Launches `<engine.path>/<engine.entrypoint>` through torchrun (same rendezvous options
as the native workers) with `mixexp.megatron_args.render(cfg)`, the data / tokenizer /
checkpoint arguments (`io_args`) and `engine.extra_args`. Its output is teed to the
console and RUN_DIR/megatron_lm.log; Megatron's iteration lines
(`training_log`: "iteration N/ M | ... elapsed time per iteration (ms): X | throughput per
GPU (TFLOP/s/GPU): T | learning rate: ... | lm loss: L | ... grad norm: G |",
MindSpeed-LLM prints the same) become metrics.jsonl rows, and summary.json gets the
native engine's keys, so sweeps and compare work unchanged. Runs in the launcher
process: no torch import.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from mixexp.errors import ConfigError
from mixexp.layout import Layout

LOG_NAME = "megatron_lm.log"
COMMAND_NAME = "megatron_lm_command.sh"

_ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_MEMORY = re.compile(r"memory \(MB\)\s*\|\s*allocated:\s*([0-9.eE+-]+)\s*\|\s*max allocated:\s*([0-9.eE+-]+)")
_PARAMS = re.compile(r"number of parameters on \(tensor, pipeline\) model parallel rank \((\d+),\s*(\d+)\):\s*(\d+)")
_EXCEPTION = re.compile(r"^(?:\[[^\]]*\]:?\s*)?((?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)): ?(.*)$")


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_iteration_line(line: str) -> dict | None:
    """The fields of one Megatron `training_log` line: {"iteration": N, "train_iters": M, "<key>": value, ...}."""
    match = _ITERATION.search(line)
    if match is None:
        return None
    fields: dict = {"iteration": int(match.group(1)), "train_iters": int(match.group(2))}
    for part in line[match.end():].split("|"):
        key, sep, value = part.rpartition(":")
        if sep and key.strip():
            number = _float(value.strip())
            if number is not None:
                fields[key.strip()] = number
    return fields


class LogParser:
    """Turns the lines of a Megatron run into metrics.jsonl rows (the native engine's keys)."""

    def __init__(self, seq_length: int, global_batch_size: int, world_size: int,
                 flops_per_token: float, peak_flops: float | None):
        self.seq_length, self.global_batch_size, self.world_size = seq_length, global_batch_size, world_size
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.peak_memory_mb: float | None = None
        self.params_per_rank: dict[tuple[int, int], int] = {}
        self.first_error: str | None = None

    def feed(self, line: str) -> dict | None:
        """One log line; returns a metrics row when the line holds an iteration record.

        Ranks share one stdout, and with unbuffered output one rank's record can land in the
        middle of another's line, so every pattern is looked for in every line.
        """
        if (m := _MEMORY.search(line)) is not None:
            peak = float(m.group(2))
            self.peak_memory_mb = max(peak, self.peak_memory_mb or 0.0)
        if (m := _PARAMS.search(line)) is not None:
            self.params_per_rank[(int(m.group(1)), int(m.group(2)))] = int(m.group(3))
        fields = parse_iteration_line(line)
        if fields is None:
            if self.first_error is None and (e := _EXCEPTION.match(line.strip())) is not None \
                    and not e.group(1).endswith("ChildFailedError"):
                self.first_error = f"{e.group(1)}: {e.group(2)}".strip().rstrip(":")
            return None
        return self.row(fields)

    def row(self, fields: dict) -> dict:
        step_time = fields.get("elapsed time per iteration (ms)")
        step_time = step_time / 1000.0 if step_time else None
        batch = int(fields.get("global batch size", self.global_batch_size))
        tokens_per_sec = batch * self.seq_length / step_time if step_time else None
        per_device = tokens_per_sec / self.world_size if tokens_per_sec is not None else None
        tflops = fields.get("throughput per GPU (TFLOP/s/GPU)")
        if tflops is None and per_device is not None:  # logged without --log-throughput: our formula
            tflops = per_device * self.flops_per_token / 1e12
        return {
            "step": fields["iteration"],
            "loss": fields.get("lm loss"),
            "lr": fields.get("learning rate"),
            "grad_norm": fields.get("grad norm"),
            "step_time_s": step_time,
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": per_device,
            "tflops_per_device": tflops,
            "mfu": tflops * 1e12 / self.peak_flops if tflops is not None and self.peak_flops else None,
            "memory_gb": self.peak_memory_mb / 1024.0 if self.peak_memory_mb is not None else None,
        }

    @property
    def params_per_rank_max(self) -> int | None:
        return max(self.params_per_rank.values()) if self.params_per_rank else None


def entrypoint(engine_cfg) -> Path:
    """The checkout's training script; ConfigError when the config does not point at one."""
    name = engine_cfg.entrypoint
    if not engine_cfg.path:
        raise ConfigError(f"engine=megatron_lm needs engine.path: the Megatron-LM or MindSpeed-LLM checkout that "
                          f"holds {name} (engine.path=/path/to/MindSpeed-LLM)")
    root = Path(engine_cfg.path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"engine.path={engine_cfg.path} is not a directory: point it at a Megatron-LM or "
                          f"MindSpeed-LLM checkout")
    script = root / name
    if not script.is_file():
        raise ConfigError(f"engine.path={engine_cfg.path} has no {name}: point engine.path at the checkout's root "
                          f"or set engine.entrypoint")
    return script.resolve()


def check_data(cfg) -> None:
    if cfg.data.kind == "instruction":
        raise ConfigError(f"engine=megatron_lm pretrains on indexed or synthetic data; data={cfg.data.name} is "
                          f"instruction data (data.kind=instruction): use engine=native")


def run_megatron_lm(cfg, layout: Layout, run_dir: Path) -> dict:
    """Launch, tee and parse one run of the checkout's pretrain_gpt.py; returns summary.json's content."""
    from mixexp.app import nproc_per_node
    from mixexp.data.prepare import prepare_data
    from mixexp.flops import flops_per_token, padded_vocab_size, params_total
    from mixexp.launch import free_port, supervise, torchrun_prefix, worker_env
    from mixexp.megatron_args import io_args, render
    from mixexp.metrics import peak_flops, summarize
    from mixexp.report import MetricsWriter, write_summary

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    script = entrypoint(cfg.engine)  # config errors before any data preparation
    check_data(cfg)
    model_args = render(cfg)
    prefix = prepare_data(cfg.data, cfg.train.seq_length) if cfg.data.kind != "synthetic" else None
    nproc = nproc_per_node(cfg, layout)
    # torchrun (as the native launcher runs it) + the checkout's script + its arguments
    cmd = [*torchrun_prefix(cfg, nproc, cfg.cluster.master_port or free_port()), str(script), *model_args,
           *io_args(cfg, prefix, save_dir=str(run_dir / "checkpoints")), *map(str, cfg.engine.extra_args)]
    (run_dir / COMMAND_NAME).write_text(f"cd {shlex.quote(cfg.engine.path)} && \\\n  "
                                        + " \\\n  ".join(shlex.quote(c) for c in cmd) + "\n")

    env = worker_env(cfg, nproc)
    env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"  # Megatron-LM refuses sequence parallelism without it
    t = cfg.train
    vocab = padded_vocab_size(cfg.model, cfg.parallel.tp)
    peak = peak_flops(cfg.hardware, t.precision)
    parser = LogParser(t.seq_length, t.global_batch_size, layout.world_size,
                       flops_per_token(cfg.model, t.seq_length, vocab), peak)
    writer = MetricsWriter(run_dir, t.iters, t.log_interval)
    print(f"[mixexp] engine=megatron_lm: {Path(cfg.engine.path) / cfg.engine.entrypoint} on {layout.name} (world {layout.world_size}); "
          f"log: {run_dir / LOG_NAME}", flush=True)

    with open(run_dir / LOG_NAME, "w") as log:
        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            row = parser.feed(line)
            if row is not None:
                writer.write(row)

        try:
            code = supervise(cmd, env, cwd=cfg.engine.path, on_line=on_line)
        finally:
            writer.close()

    common = dict(layout=layout.as_dict(), world_size=layout.world_size,
                  params_total=params_total(cfg.model, vocab), params_per_rank_max=parser.params_per_rank_max)
    if code != 0 or not writer.rows:
        error = parser.first_error or (f"{cfg.engine.entrypoint} exited with code {code}" if code != 0 else
                                       f"{cfg.engine.entrypoint} printed no iteration lines (see {LOG_NAME})")
        return write_summary(run_dir, status="failed", error=error, **common)
    averages = summarize(writer.rows, t.warmup_steps)
    if parser.peak_memory_mb is not None:  # its report may come after the last iteration line
        averages["peak_memory_gb"] = parser.peak_memory_mb / 1024.0
    return write_summary(run_dir, status="ok", **common, **averages)
