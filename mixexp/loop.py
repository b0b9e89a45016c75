"""One training step over megatron-core: DDP, its optimizer, its LR schedule, its pipeline schedules.

Each micro-batch returns its summed loss and token count; Megatron turns that
into the micro-batch's token mean, averaged over micro-batches and data-parallel
(and context-parallel) ranks, so every layout optimizes the same objective. The
reported loss is the token mean over the whole global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from mixexp import ckpt_compat


@dataclass
class StepResult:
    loss: float | None  # mean LM loss over the global batch (last pipeline stage only)
    tokens: int  # loss tokens in the global batch (last pipeline stage only)
    grad_norm: float | None  # None: not computed (optim.clip_grad=0) or the update was not applied
    lr: float
    # What was NaN/Inf on any rank this step ("loss", "gradients"); when not empty, no update was applied.
    nonfinite: tuple[str, ...] = ()


def wrap_ddp(chunks, config, cfg):
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    return [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=(i > 0))
        for i, chunk in enumerate(chunks)
    ]


def build_optimizer(model, cfg):
    o, t = cfg.optim, cfg.train
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=t.precision == "bf16",
            params_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float32,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        ),
        model,
    )
    if cfg.hardware.device == "cpu":
        use_fused_adam(optimizer)
    decay_iters = o.lr_decay_iters or t.iters
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.lr_warmup_iters else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters,
        lr_decay_steps=max(decay_iters, o.lr_warmup_iters + 1),
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def use_fused_adam(optimizer) -> None:
    """Without Transformer Engine or Apex, megatron-core builds torch's AdamW with its per-tensor loop;
    torch's fused CPU kernel does the same update several times faster. Also after loading a checkpoint,
    whose saved param groups would switch it off again."""
    def fused(opt, *_):
        if isinstance(opt, torch.optim.AdamW):
            for group in opt.param_groups:
                group.update(fused=True, foreach=False)

    for inner in ckpt_compat.torch_optimizers(optimizer):
        fused(inner)
        inner.register_load_state_dict_post_hook(fused)


def _loss(loss_mask, output_tensor):
    """Summed loss, token count and a report of one micro-batch (Megatron's 3-tuple loss contract)."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(losses * mask)
    tokens = mask.sum().to(torch.int)
    return loss_sum, tokens, {"lm loss": torch.stack([loss_sum.detach(), tokens.float()])}


def _forward_step(data_iterator, model, poison: bool = False):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    if poison:  # train.fault=nan: this stage's output (activations, or the losses) becomes NaN
        output = output * float("nan")
    return output, partial(_loss, batch["loss_mask"])


def _nonfinite_gradients(model) -> bool:
    """Any NaN/Inf in this rank's (data-parallel reduced) gradient buffers. A sum per buffer: NaN and
    Inf survive it, and unlike isfinite() over the buffer it allocates nothing the buffer's size."""
    sums = [buffer.grad_data.sum() for chunk in model for buffer in chunk.buffers + chunk.expert_parallel_buffers]
    return bool(sums) and not torch.isfinite(torch.stack(sums)).all().item()


def _nonfinite_anywhere(loss_bad: bool, grads_bad: bool, device) -> tuple[str, ...]:
    """What was NaN/Inf on any rank: every rank gets the same answer, so all skip or stop together."""
    flags = torch.tensor([float(loss_bad), float(grads_bad)], device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return tuple(name for name, bad in zip(("loss", "gradients"), flags.tolist()) if bad)


class Trainer:
    def __init__(self, model, optimizer, scheduler, config, cfg, microbatches):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.cfg, self.microbatches = cfg, microbatches
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
        self.forward_backward = get_forward_backward_func()

    def step(self, step: int, poison: bool = False) -> StepResult:
        """One update; with a NaN/Inf loss or gradient on any rank, no rank applies it."""
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = self.microbatches.step(step)
        # Every virtual stage reads the same micro-batches; share one materialized list.
        data = list(batches)
        iterators = [iter(data) for _ in self.model] if len(self.model) > 1 else iter(data)
        reports = self.forward_backward(
            forward_step_func=partial(_forward_step, poison=poison),
            data_iterator=iterators,
            model=self.model if len(self.model) > 1 else self.model[0],
            num_microbatches=self.microbatches.num_microbatches,
            seq_length=self.cfg.train.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=False,
        )
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's update used
        loss, tokens = None, 0
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            totals = torch.stack([r["lm loss"] for r in reports]).sum(0)
            torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
            loss, tokens = (totals[0] / totals[1]).item(), int(totals[1].item())
        nonfinite = _nonfinite_anywhere(loss is not None and not math.isfinite(loss), _nonfinite_gradients(self.model),
                                        next(self.model[0].parameters()).device)
        if nonfinite:  # as Megatron does for a bad step: no update, the schedule does not advance
            return StepResult(loss=loss, tokens=tokens, grad_norm=None, lr=lr, nonfinite=nonfinite)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        return StepResult(loss=loss, tokens=tokens, grad_norm=None if grad_norm is None else float(grad_norm), lr=lr)
