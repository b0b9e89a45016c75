"""Structured configs: one dataclass per Hydra group, registered in the ConfigStore.

Every YAML file under conf/ extends one of these schemas, so a wrong type or an
unknown key fails when Hydra composes the config, before anything is imported
or launched. Pure Python: no torch here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from mixexp.npu_config import NpuConfig


@dataclass
class ModelConfig:
    name: str = MISSING
    num_layers: int = MISSING
    hidden_size: int = MISSING
    ffn_hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: int = MISSING
    vocab_size: int = 32000
    make_vocab_size_divisible_by: int = 1
    max_position_embeddings: int = 32768
    rotary_base: float = 1_000_000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.01
    untie_embeddings: bool = True
    num_experts: int = 8
    moe_router_topk: int = 2
    moe_aux_loss_coeff: float = 0.02
    # Expert FFN width; None means ffn_hidden_size (Mixtral's experts are full FFNs).
    moe_ffn_hidden_size: Optional[int] = None


@dataclass
class ParallelConfig:
    name: str = "single"
    tp: int = 1
    pp: int = 1
    ep: int = 1
    # Expert tensor parallelism; None means "same as tp" (Megatron's default).
    etp: Optional[int] = None
    cp: int = 1
    # Virtual pipeline stages per pipeline rank; 1 means no interleaving.
    vpp: int = 1
    # Data parallelism; None means derived from the world size.
    dp: Optional[int] = None
    # None means "on whenever tp > 1" (Megatron requires it for MoE with tp > 1).
    sequence_parallel: Optional[bool] = None
    cp_algo: str = "megatron_cp_algo"
    dispatcher: str = "alltoall"
    # Default: on accelerators wherever it shards something (dp*cp > 1); off on CPU.
    distributed_optimizer: bool = "${distributed_optimizer_default:}"  # type: ignore[assignment]


@dataclass
class DataConfig:
    name: str = MISSING
    # indexed: Megatron GPTDataset over a *_text_document prefix;
    # instruction: packed alpaca files with a loss mask; synthetic: random tokens.
    kind: str = "indexed"
    # Raw input preprocessed on first use (relative to the repository root).
    raw_path: Optional[str] = None
    # Explicit Megatron prefix (skips preprocessing), e.g. ./dataset/alpaca_text_document
    prefix: Optional[str] = None
    cache_dir: str = "${oc.env:MIXEXP_CACHE,${hydra:runtime.cwd}/.cache}/data"
    tokenizer: str = "mixtral"
    tokenizer_path: Optional[str] = None
    json_key: str = "text"
    split: str = "98,2,0"
    num_workers: int = 0


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = "cpu"  # cpu | npu | cuda
    # True: an NPU run rehearsed on CPU ranks (the real MindSpeed over mixexp's torch_npu stand-in).
    rehearsal: bool = False
    backend: str = "gloo"  # gloo | hccl | nccl
    # None: on CPU, as many processes as the layout needs.
    devices_per_node: Optional[int] = None
    memory_gb: float = MISSING
    peak_flops_bf16: float = MISSING
    # None: unknown; MFU of fp32 runs is then not reported.
    peak_flops_fp32: Optional[float] = None
    intra_node_bandwidth_gbps: float = MISSING  # GB/s per device
    inter_node_bandwidth_gbps: float = MISSING  # GB/s per device
    # Fraction of peak a large GEMM-bound step reaches; used by the planner.
    compute_efficiency: float = 0.5
    # GB per device outside the model (CPU: torch + megatron resident set; CUDA/NPU: context,
    # workspaces); None: by device kind in mixexp.memory.
    runtime_overhead_gb: Optional[float] = None
    bf16_supported: bool = True
    # CPU only: torch threads of the whole job, split evenly over its ranks (set before torch starts),
    # so that the jobs of a comparison get the same CPU; None: the CPUs this process may run on.
    cpu_threads: Optional[int] = None
    # What train.precision and train.collective_timeout_s default to here: CPU fp32 and 2 minutes,
    # accelerators bf16 and Megatron's 10 minutes. The train.* keys override them.
    default_precision: str = "fp32"
    default_collective_timeout_s: int = 120


@dataclass
class ClusterConfig:
    nnodes: int = 1
    # None: hardware.devices_per_node, or on CPU the layout's world size.
    devices_per_node: Optional[int] = None
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    # 0 picks a free port (single node only).
    master_port: int = 0


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_warmup_iters: int = 0
    lr_decay_style: str = "cosine"
    # None: decay over train.iters.
    lr_decay_iters: Optional[int] = None


@dataclass
class LoggerConfig:
    name: str = "console"  # console | wandb
    project: str = "mixexp"
    # None: the sweep name in a multirun, else no group.
    group: Optional[str] = None
    entity: Optional[str] = None
    # None: "offline" unless WANDB_API_KEY is set.
    mode: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainSettings:
    iters: int = 20
    global_batch_size: int = 8
    micro_batch_size: int = 2
    seq_length: int = 128
    seed: int = 1234
    precision: str = "${hardware.default_precision}"  # fp32 | bf16
    recompute: str = "none"  # none | selective | full
    log_interval: int = 1
    dry_run: bool = False
    # Steps left out of throughput averages (first steps pay for warm-up).
    warmup_steps: int = 2
    # Timeout of every collective; a hung peer fails the job instead of waiting forever.
    collective_timeout_s: int = "${hardware.default_collective_timeout_s}"  # type: ignore[assignment]
    # A NaN/Inf loss or gradient: stop (the run ends at that step, status "diverged", exit 1) or
    # skip (that update is dropped, as Megatron does for a bad step; the run still ends as diverged
    # after more than train.max_consecutive_skips bad steps in a row).
    on_nan: str = "stop"
    max_consecutive_skips: int = 5
    # Fault injection, to check that a failing rank ends the whole job: rank `fault_rank`
    # raises (fault=raise), stops answering (fault=hang) or makes its forward output NaN
    # (fault=nan, for train.on_nan) at step `fault_step`.
    fault: Optional[str] = None
    fault_rank: int = 0
    fault_step: int = 1


@dataclass
class CkptConfig:
    # Save every N steps and at the last step; 0: no periodic saves (a preemption still saves).
    save_interval: int = 0
    # Where checkpoints go (iter_XXXXXXX/ and a `latest` pointer); None: <run_dir>/checkpoints.
    dir: Optional[str] = None
    # Start from: a checkpoint dir (iter_XXXXXXX/, a converted one, or a root with `latest`), or
    # "auto" (= null): the newest under `dir`. A `latest` under `dir` always wins, so a relaunch resumes.
    load: Optional[str] = None
    # Load only the model weights (fresh optimizer, schedule and step): fine-tuning, continued pretraining.
    finetune: bool = False
    keep_last: int = 2
    # On SIGTERM/SIGINT: finish the step, save, exit. The launcher kills what is left after this long.
    save_on_preempt: bool = True
    preempt_grace_s: int = 120
    # Check a checkpoint against its manifest (file sizes before launching, CRC-32s before training).
    verify: bool = True
    # Fault injection: the save at this step dies (SIGKILL) after writing its files, before committing.
    fault_during_save: Optional[int] = None


@dataclass
class EngineConfig:
    # native: mixexp's own loop over megatron-core. megatron_lm: a team's own
    # Megatron-LM / MindSpeed-LLM checkout's pretrain_gpt.py with rendered arguments.
    name: str = "native"
    path: Optional[str] = None
    entrypoint: str = "pretrain_gpt.py"
    extra_args: list[str] = field(default_factory=list)


@dataclass
class RootConfig:
    model: ModelConfig = MISSING
    parallel: ParallelConfig = MISSING
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    npu: NpuConfig = field(default_factory=NpuConfig)


# conf_local/ (train.yaml's search path for user sweeps and layouts) need not exist.
warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf_local is not available")


def _register_resolvers() -> None:
    """`${layout_name:}`: the run directory and the sweep job directory name the layout that runs.
    `${distributed_optimizer_default:}`: parallel.distributed_optimizer unless it is set."""
    from omegaconf import OmegaConf

    from mixexp.layout import distributed_optimizer_default, layout_name
    from mixexp.slurm_resources import register_resolvers

    register_resolvers()  # the SLURM launcher's resources from the hardware config
    if not OmegaConf.has_resolver("layout_name"):
        OmegaConf.register_new_resolver("layout_name", lambda *, _root_: layout_name(_root_))
    if not OmegaConf.has_resolver("distributed_optimizer_default"):
        OmegaConf.register_new_resolver("distributed_optimizer_default",
                                        lambda *, _root_: distributed_optimizer_default(_root_))


def register_configs() -> None:
    """Register the schemas; YAML files extend them through their defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="parallel", name="parallel_schema", node=ParallelConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="hardware", name="hardware_schema", node=HardwareConfig)
    cs.store(group="cluster", name="cluster_schema", node=ClusterConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    cs.store(group="engine", name="engine_schema", node=EngineConfig)


register_configs()
_register_resolvers()
