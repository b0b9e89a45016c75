"""On accelerators: bf16, the distributed optimizer where it shards something, Megatron's 10-minute timeout.
CPU keeps fp32, the plain optimizer and 2 minutes; every one of them can be overridden."""

import pytest

from conftest import compose
from mixexp.megatron_args import render

ACCELERATORS = ["ascend_910b", "nvidia_a100", "nvidia_h100", "nvidia_h200"]


@pytest.mark.parametrize("hardware", ACCELERATORS)
def test_accelerator_defaults(hardware):
    # tp8 pp2 cp4 on 8 nodes: dp 1, but the distributed optimizer shards over dp*cp = 4
    cfg = compose("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", f"hardware={hardware}", "cluster.nnodes=8")
    assert (cfg.train.precision, cfg.train.collective_timeout_s, cfg.parallel.distributed_optimizer) == \
        ("bf16", 600, True)


def test_the_distributed_optimizer_only_where_it_shards():
    one = compose("model=mixtral_8x7b", "parallel.tp=8", "hardware=nvidia_h100")  # 8 GPUs: tp 8, dp 1, cp 1
    assert one.parallel.distributed_optimizer is False
    two = compose("model=mixtral_8x7b", "parallel.tp=8", "hardware=nvidia_h100", "cluster.nnodes=2")  # dp 2
    assert two.parallel.distributed_optimizer is True


def test_cpu_keeps_its_own():
    cfg = compose("parallel.dp=2")
    assert (cfg.train.precision, cfg.train.collective_timeout_s, cfg.parallel.distributed_optimizer) == \
        ("fp32", 120, False)


def test_overrides_win():
    cfg = compose("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8",
                  "train.precision=fp32", "train.collective_timeout_s=300", "parallel.distributed_optimizer=false")
    assert (cfg.train.precision, cfg.train.collective_timeout_s, cfg.parallel.distributed_optimizer) == \
        ("fp32", 300, False)
    flags = render(cfg)
    assert "--bf16" not in flags and "--use-distributed-optimizer" not in flags
    assert flags[flags.index("--distributed-timeout-minutes") + 1] == "5"


def test_megatron_flags_of_the_readme_command():
    flags = render(compose("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8"))
    assert "--bf16" in flags and "--use-distributed-optimizer" in flags
    assert flags[flags.index("--distributed-timeout-minutes") + 1] == "10"
