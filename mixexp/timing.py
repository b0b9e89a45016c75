"""Analytical step time of a layout: compute, collectives, pipeline bubble.

One micro-batch on the slowest pipeline stage costs its compute (Megatron's
FLOPs at the hardware's peak times `compute_efficiency`, plus what recompute
redoes) and the collectives that sit on its critical path:

- TP/SP: all-gather + reduce-scatter around attention (and around the experts
  when etp>1), forward and backward, each a ring over the tensor-parallel group;
- EP: the alltoall dispatcher's dispatch and combine, forward and backward;
- CP: the ring exchange of K/V (and dK/dV in backward) of `megatron_cp_algo`,
  hidden behind the core attention it overlaps with; all-to-alls for Ulysses;
- PP: the activation and its gradient sent to the neighbouring stage.

A step is (M + (pp-1)/vpp) micro-batches of the slowest stage (1F1B with the
interleaved schedule's smaller bubble), plus the part of the data-parallel
gradient reduce-scatter and parameter all-gather (all-reduce without the
distributed optimizer) that the last backward / first forward cannot hide.

Each collective runs at the intra-node bandwidth when its group sits inside a
node, else at the inter-node one (all-to-alls split their traffic between the
two). Groups follow Megatron's rank order tp-cp-ep-dp-pp: TP ranks are
adjacent, CP strides by tp, DP by tp*cp, PP by tp*cp*dp; expert groups order
etp-ep-edp. The configured bandwidths are per device and nominal;
`LINK_EFFICIENCY` is the fraction collectives reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mixexp.flops import core_attention_flops_per_token, flops_per_token, kv_channels, layer_flops_per_token
from mixexp.layout import devices_per_node
from mixexp.memory import (bytes_per_element, expert_data_parallel, expert_params_per_rank, layers_per_stage,
                           num_microbatches, sp_degree)
from mixexp.metrics import ThroughputModel, peak_flops

# Fraction of the nominal per-device bandwidth that NCCL/HCCL collectives reach (bus bandwidth):
# intra-node figures (NVLink 900 GB/s, HCCS 392 GB/s) are bidirectional aggregates, of which ring
# collectives reach ~80% of one direction; NICs (per direction) reach ~80%.
LINK_EFFICIENCY = {"intra": 0.4, "inter": 0.8}


@dataclass
class Group:
    """A process group as Megatron lays it out: `size` ranks, `stride` apart."""
    size: int
    stride: int

    def local_ranks(self, devices_per_node: int) -> int:
        """Members of the group on one node."""
        if self.size * self.stride <= devices_per_node:
            return self.size
        return max(1, devices_per_node // self.stride)


def _bandwidth(hw, kind: str) -> float:
    nominal = hw.intra_node_bandwidth_gbps if kind == "intra" else hw.inter_node_bandwidth_gbps
    return nominal * 1e9 * LINK_EFFICIENCY[kind]


def ring_time(hw, devices_per_node: int, group: Group, full_bytes: float) -> float:
    """All-gather or reduce-scatter of a tensor of `full_bytes` (gathered size) over the group."""
    if group.size <= 1:
        return 0.0
    kind = "intra" if group.local_ranks(devices_per_node) == group.size else "inter"
    return (group.size - 1) / group.size * full_bytes / _bandwidth(hw, kind)


def alltoall_time(hw, devices_per_node: int, group: Group, bytes_per_rank: float) -> float:
    """All-to-all where each rank holds `bytes_per_rank`, spread evenly over the group."""
    if group.size <= 1:
        return 0.0
    local = group.local_ranks(devices_per_node)
    intra = (local - 1) / group.size * bytes_per_rank / _bandwidth(hw, "intra")
    inter = (group.size - local) / group.size * bytes_per_rank / _bandwidth(hw, "inter")
    return max(intra, inter)


@dataclass
class StepTime:
    """Seconds; per-micro-batch figures are for the slowest pipeline stage."""
    compute_s: float
    recompute_s: float
    tp_comm_s: float
    ep_comm_s: float
    cp_comm_s: float
    pp_comm_s: float
    microbatch_s: float
    microbatches: int
    pipeline_s: float
    bubble_s: float
    dp_comm_s: float
    dp_exposed_s: float
    step_time_s: float
    tokens_per_sec_per_device: float
    tflops_per_device: float
    mfu: float | None

    @property
    def communication_s(self) -> float:
        """All communication of a step, hidden or not."""
        return (self.tp_comm_s + self.ep_comm_s + self.cp_comm_s + self.pp_comm_s) * self.microbatches + self.dp_comm_s

    def as_dict(self) -> dict:
        return asdict(self)


def predict_step(cfg, layout, params_by_stage: list[int]) -> StepTime:
    """Predicted step time of `layout` for cfg's model, batch and hardware."""
    m, t, hw = cfg.model, cfg.train, cfg.hardware
    dpn = devices_per_node(cfg) or layout.world_size
    true_peak = peak_flops(hw, t.precision)
    rate = (true_peak or peak_flops(hw, "bf16")) * hw.compute_efficiency
    e = bytes_per_element(cfg)
    tokens = t.micro_batch_size * t.seq_length / layout.cp  # per rank of a CP group, per micro-batch
    sp = sp_degree(cfg, layout)
    h, k = m.hidden_size, m.moe_router_topk
    layers = layers_per_stage(cfg, layout)
    full_recompute = t.recompute == "full"

    # Compute of one micro-batch on one device of the last stage (it also runs the output layer).
    layer_f, core_f = layer_flops_per_token(m, t.seq_length), core_attention_flops_per_token(m, t.seq_length)
    per_device = tokens / layout.tp
    compute = per_device * (layers * layer_f + 6 * h * m.vocab_size) / rate
    recompute = {"none": 0.0, "selective": core_f / 3, "full": layer_f / 3}[t.recompute] * per_device * layers / rate

    # Tensor (and expert-tensor) parallel collectives, forward and backward (+ the recomputed forward).
    passes = 3 if full_recompute else 2
    tp_group = Group(layout.tp, 1)
    tp = passes * 2 * ring_time(hw, dpn, tp_group, tokens * h * e)
    if sp == 1:  # without sequence parallelism each all-gather/reduce-scatter pair is an all-reduce each way
        tp *= 2
    if m.num_experts and layout.etp > 1:
        gathered = tokens * k / sp * layout.etp * h * e
        tp += passes * 2 * ring_time(hw, dpn, Group(layout.etp, 1), gathered)
    tp *= layers

    # Expert-parallel alltoall: dispatch + combine per pass.
    ep = 0.0
    if m.num_experts and layout.ep > 1:
        ep = layers * passes * 2 * alltoall_time(hw, dpn, Group(layout.ep, layout.etp), tokens * k / sp * h * e)

    # Context parallelism (forward passes: 1, or 2 under full recompute; one backward).
    cp = 0.0
    if layout.cp > 1:
        cp_group = Group(layout.cp, layout.tp)
        forwards = passes - 1
        hq = m.num_attention_heads * kv_channels(m) / layout.tp
        hkv = m.num_query_groups * kv_channels(m) / layout.tp
        if cfg.parallel.cp_algo == "ulysses_cp_algo":  # all-to-alls of q, k, v, out (and their grads)
            cp = layers * (forwards + 1) * alltoall_time(hw, dpn, cp_group, tokens * (2 * hq + 2 * hkv) * e)
        else:
            # Ring: cp-1 hops of this rank's K, V forward, of K, V, dK, dV backward, hidden
            # behind the core attention of the chunk in hand.
            kind = "intra" if cp_group.local_ranks(dpn) == layout.cp else "inter"
            kv = tokens * 2 * hkv * e
            comm = (layout.cp - 1) * kv * (forwards + 2) / _bandwidth(hw, kind)
            attention = per_device * core_f * (1 + (forwards - 1) / 3) / rate
            cp = layers * max(0.0, comm - attention)

    # Pipeline: activation forward, its gradient backward, per chunk boundary.
    pp = 0.0
    if layout.pp > 1:
        kind = "intra" if layout.world_size <= dpn else "inter"  # the pipeline group spans the world
        pp = layout.vpp * 2 * tokens * h / sp * e / _bandwidth(hw, kind)

    microbatch = compute + recompute + tp + ep + cp + pp
    micro = num_microbatches(cfg, layout)
    pipeline = (micro + (layout.pp - 1) / layout.vpp) * microbatch
    bubble = (layout.pp - 1) / layout.vpp * microbatch

    dp_comm, dp_exposed = _data_parallel(cfg, layout, params_by_stage, dpn, compute + recompute)
    throughput = ThroughputModel(t.global_batch_size * t.seq_length, layout.world_size,
                                 flops_per_token(m, t.seq_length), true_peak).step_metrics(pipeline + dp_exposed)
    return StepTime(
        compute_s=compute, recompute_s=recompute, tp_comm_s=tp, ep_comm_s=ep, cp_comm_s=cp, pp_comm_s=pp,
        microbatch_s=microbatch, microbatches=micro, pipeline_s=pipeline, bubble_s=bubble,
        dp_comm_s=dp_comm, dp_exposed_s=dp_exposed, step_time_s=throughput["step_time_s"],
        tokens_per_sec_per_device=throughput["tokens_per_sec_per_device"],
        tflops_per_device=throughput["tflops_per_device"], mfu=throughput["mfu"])


def _data_parallel(cfg, layout, params_by_stage, dpn: int, microbatch_compute: float) -> tuple[float, float]:
    """(time, exposed time) of the gradient reduce-scatter + parameter all-gather of the busiest stage.

    Megatron starts the reduce of each bucket once its last micro-batch's backward has produced it
    (overlap_grad_reduce) and the gather of each bucket ahead of its forward (overlap_param_gather):
    they hide behind the backward, respectively forward, of one micro-batch.
    """
    params = max(params_by_stage)
    expert = min(expert_params_per_rank(cfg.model, layout), params)
    dense = params - expert
    dense_group = Group(layout.dp * layout.cp, layout.tp)
    expert_group = Group(expert_data_parallel(layout), layout.ep * layout.etp)
    hw, e = cfg.hardware, bytes_per_element(cfg)
    reduce = ring_time(hw, dpn, dense_group, dense * 4) + ring_time(hw, dpn, expert_group, expert * 4)
    if cfg.parallel.distributed_optimizer:
        gather = ring_time(hw, dpn, dense_group, dense * e) + ring_time(hw, dpn, expert_group, expert * e)
    else:  # all-reduce = reduce-scatter + all-gather of the fp32 gradients
        reduce, gather = 2 * reduce, 0.0
    backward, forward = microbatch_compute * 2 / 3, microbatch_compute / 3
    return reduce + gather, max(0.0, reduce - backward) + max(0.0, gather - forward)
