"""One rank, top to bottom: device, process groups, model, data, loop, report.

Started by torch.distributed.run (`python -m mixexp.worker RUN_DIR`); reads the
resolved config the launcher wrote to RUN_DIR/worker_config.yaml. The device
adaptor is applied before megatron-core is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

from omegaconf import OmegaConf

from mixexp import ckpt_dirs, devices
from mixexp.errors import ConfigError
from mixexp.layout import validate
from mixexp.lifetime import die_with_parent

WORKER_CONFIG = "worker_config.yaml"


def _cpu_threads_per_rank() -> list[int]:
    """The torch threads each rank got: what a comparison of CPU layouts holds equal per job."""
    import torch
    import torch.distributed as dist

    threads = [None] * dist.get_world_size()
    dist.all_gather_object(threads, torch.get_num_threads())
    return threads


# Warnings each rank would print alike: the reporting rank prints them, the others stay quiet.
EVERY_RANK_WARNINGS = (r"`torch\.distributed\.\w+` is deprecated", r"The \.grad attribute of a Tensor that is not a leaf")


def _quiet_known_warnings(device: str, reporting: bool) -> None:
    """megatron-core warns at import about optional fused kernels; say it once in the README instead."""
    for pattern in ("Transformer Engine and Apex are not installed", "Apex is not installed",
                    "full scope is deprecated", ".*Transformer Engine.*", ".*grouped_gemm.*"):
        warnings.filterwarnings("ignore", message=pattern)
    if device == "cpu":  # CPU has no hardware queues to order
        warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS")
    if not reporting:
        for pattern in EVERY_RANK_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def _wandb(cfg, layout, world: int, run_dir: Path):
    if cfg.logger.name != "wandb":
        return None
    from mixexp.wandb_logger import WandbLogger

    lg = cfg.logger
    return WandbLogger(project=lg.project, group=cfg.get("run_group"), name=run_dir.name,
                       config=OmegaConf.to_container(cfg, resolve=True),
                       layout={**layout.as_dict(), "world_size": world}, run_dir=str(run_dir),
                       mode=lg.mode, entity=lg.entity, tags=list(lg.tags))


def _inject_fault(cfg, rank: int, step: int) -> None:
    t = cfg.train
    if t.fault and rank == t.fault_rank and step == t.fault_step:
        if t.fault == "raise":
            raise RuntimeError(f"injected fault at step {step}")
        if t.fault == "hang":
            time.sleep(10 * t.collective_timeout_s + 600)  # peers must time out


def _poisoned(cfg, rank: int, step: int) -> bool:
    """train.fault=nan: this rank's forward output is NaN at this step (a divergence, for train.on_nan)."""
    t = cfg.train
    return t.fault == "nan" and rank == t.fault_rank and step == t.fault_step


def divergence(t, step: int, result, in_a_row: int) -> str | None:
    """Why a step with a NaN/Inf loss or gradient ends the run, or None when train.on_nan=skip goes on."""
    what = " and ".join(f"loss ({result.loss})" if name == "loss" and result.loss is not None else name
                        for name in result.nonfinite)
    if t.on_nan == "stop":
        return (f"non-finite {what} at step {step} (train.on_nan=stop): lower optim.lr or set "
                f"optim.clip_grad; train.on_nan=skip drops such steps")
    if in_a_row > t.max_consecutive_skips:
        return (f"non-finite {what} at step {step}, {in_a_row} in a row "
                f"(train.max_consecutive_skips={t.max_consecutive_skips})")
    return None


class StopFlag:
    """SIGTERM (what SLURM sends before a time limit) or SIGINT sets a flag; the loop checks it after each
    step, all ranks agree on it (any rank's flag counts), save a checkpoint together and exit cleanly.

    A signal after a peer has failed (it wrote run_dir/errors/ before exiting) is torchrun stopping
    the survivors, not a preemption: then the signal does what it does by default, at once.
    """

    def __init__(self, errors_dir: Path):
        self.requested = False
        self.errors_dir = errors_dir
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.errors_dir.is_dir() and any(self.errors_dir.iterdir()):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.requested = True


def run(cfg, run_dir: Path, rank: int, world: int) -> None:
    layout = validate(cfg)
    # Installed first: a SIGTERM while the model is built still ends with a saved step.
    stop = StopFlag(run_dir / "errors") if cfg.ckpt.save_on_preempt else None
    device = cfg.hardware.device
    _quiet_known_warnings(device, reporting=rank == world - 1)
    devices.prepare(device, cfg)

    import torch
    import torch.distributed as dist

    torch.manual_seed(cfg.train.seed)
    timeout = timedelta(seconds=cfg.train.collective_timeout_s)
    dist.init_process_group(cfg.hardware.backend, timeout=timeout)
    cpu_threads = _cpu_threads_per_rank() if device == "cpu" else None

    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.utils import get_model_config

    devices.finish(device)
    from mixexp.model import init_parallel_state

    # Megatron's groups take minutes; a fraction keeps a timeout under a minute what it says.
    init_parallel_state(layout, distributed_timeout_minutes=cfg.train.collective_timeout_s / 60)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.train.seed)

    from mixexp import checkpoint
    from mixexp.data.loader import MicroBatches, build_dataset
    from mixexp.flops import flops_per_token, params_total
    from mixexp.init_weights import init_layout_independent
    from mixexp.loop import Trainer, build_optimizer, wrap_ddp
    from mixexp.metrics import ThroughputModel, peak_flops, summarize
    from mixexp.model import build_model_chunks, count_parameters, padded_vocab_size
    from mixexp.report import MetricsWriter, write_summary

    chunks = build_model_chunks(cfg, layout)
    load_path, weights_only = ckpt_dirs.resolve(cfg.ckpt, run_dir)
    if load_path is None:
        init_layout_independent(chunks, cfg.train.seed, cfg.model.init_method_std, cfg.model.num_layers)
    on_device = devices.torch_device(device)  # NCCL and HCCL reduce device tensors only
    local_params = torch.tensor([count_parameters(chunks)], dtype=torch.int64, device=on_device)
    dist.all_reduce(local_params, op=dist.ReduceOp.MAX)
    config = get_model_config(chunks[0])
    model = wrap_ddp(chunks, config, cfg)
    optimizer, scheduler = build_optimizer(model, cfg)
    start = checkpoint.load(load_path, chunks, optimizer, scheduler, cfg, layout, weights_only) if load_path else 0
    ckpt_root = ckpt_dirs.root_dir(cfg.ckpt, run_dir)

    t = cfg.train
    dataset = build_dataset(cfg, cfg.get("data_prefix"), t.iters * t.global_batch_size)
    microbatches = MicroBatches(dataset, cfg, layout, parallel_state.get_data_parallel_rank(),
                                parallel_state.get_context_parallel_rank(), on_device)
    trainer = Trainer(model, optimizer, scheduler, config, cfg, microbatches)

    vocab = padded_vocab_size(cfg)
    peak = peak_flops(cfg.hardware, t.precision)
    throughput = ThroughputModel(t.global_batch_size * t.seq_length, world,
                                 flops_per_token(cfg.model, t.seq_length, vocab), peak)
    reporting = rank == world - 1  # a rank of the last pipeline stage, where the loss is
    writer = MetricsWriter(run_dir, t.iters, t.log_interval, keep_until=start) if reporting else None
    tracker = _wandb(cfg, layout, world, run_dir) if reporting else None
    stack = devices.stack(device)
    if reporting:
        print(f"[mixexp] {cfg.model.name} on {layout.name} (world {world}, {cfg.hardware.name}): "
              f"{int(local_params.item()):,} parameters on the largest rank; {t.iters} steps of "
              f"{t.global_batch_size}x{t.seq_length} tokens", flush=True)
        print("[mixexp] stack: " + ", ".join(f"{k} {v}" for k, v in stack.items()), flush=True)
        if load_path:
            what = "weights of" if weights_only else f"step {start} from"
            print(f"[mixexp] loaded {what} {load_path}", flush=True)

    interval, preempted = cfg.ckpt.save_interval, False
    diverged, skipped, in_a_row = None, 0, 0
    for step in range(start + 1, t.iters + 1):
        _inject_fault(cfg, rank, step)
        begin = time.perf_counter()
        result = trainer.step(step - 1, poison=_poisoned(cfg, rank, step))
        step_time = time.perf_counter() - begin
        # One collective per step: the peak memory, and whether any rank was asked to stop. float32:
        # MindSpeed's all_reduce reduces a float64 tensor in a float32 copy and drops the result.
        shared = torch.tensor([devices.peak_memory_gb(device), float(bool(stop and stop.requested))],
                              dtype=torch.float32, device=on_device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        preempted = shared[1].item() > 0
        if step == start + 1:
            devices.after_first_step(device, cfg)
        if reporting:
            row = {"step": step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                   **throughput.step_metrics(step_time), "memory_gb": shared[0].item()}
            if result.nonfinite:
                row["nonfinite"] = list(result.nonfinite)
            writer.write(row)
            if tracker:
                tracker.log_step(step, row)
        in_a_row = in_a_row + 1 if result.nonfinite else 0
        if result.nonfinite:
            diverged = divergence(t, step, result, in_a_row)
            if diverged is None:
                skipped += 1
                if reporting:
                    print(f"[mixexp] step {step}: non-finite {' and '.join(result.nonfinite)}; update skipped "
                          f"(train.on_nan=skip, {in_a_row} in a row)", flush=True)
            elif reporting:
                print(f"[mixexp] diverged: {diverged}", flush=True)
        if diverged:
            break
        if preempted or (interval and (step % interval == 0 or step == t.iters)):
            path = checkpoint.save(ckpt_root, step, chunks, optimizer, scheduler, cfg, layout)
            if reporting:
                print(f"[mixexp] saved {path}", flush=True)
        if preempted:
            if reporting:
                print(f"[mixexp] stopped by a signal after step {step}; relaunch with the same run dir "
                      f"(or ckpt.load=auto) to resume", flush=True)
            break

    if reporting:
        writer.close()
        status = "diverged" if diverged else "preempted" if preempted else "ok"
        summary = write_summary(run_dir, status=status, error=diverged, skipped_steps=skipped,
                                layout=layout.as_dict(), world_size=world,
                                params_total=params_total(cfg.model, vocab),
                                params_per_rank_max=int(local_params.item()), stack=stack,
                                cpu_threads=cpu_threads,
                                **summarize(writer.rows, t.warmup_steps))
        if tracker:
            tracker.finish(summary, summary["status"])
    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    if os.getppid() == 1:  # torchrun died while we started: nobody supervises this rank
        return 1
    die_with_parent(os.getppid())  # a killed torchrun takes its ranks with it
    run_dir = Path(argv[0])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cfg = OmegaConf.load(run_dir / WORKER_CONFIG)
    try:
        run(cfg, run_dir, rank, world)
    except BaseException as exc:
        errors = run_dir / "errors"
        errors.mkdir(exist_ok=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else traceback.format_exc().splitlines()[-2].strip()
        kind = "ConfigError" if isinstance(exc, ConfigError) else type(exc).__name__  # app.py answers it with exit 2
        message = f"rank {rank}: {kind}: {detail}"
        (errors / f"rank{rank}.txt").write_text(message + "\n\n" + traceback.format_exc())
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
