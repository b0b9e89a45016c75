"""Config mistakes that used to slip into the ranks: exit 2 and one line on stderr, before anything launches."""

import pytest

from conftest import run_train
from mixexp.app import rank_config_error


def one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("override, key", [("+nosuchkey=1", "nosuchkey"), ("+train.nosuch=2", "train.nosuch")])
def test_added_unknown_keys_are_refused(override, key, tmp_path):
    result = run_train(override, "train.dry_run=true", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert one_line(result) == (f"error: unknown key {key}: no config group declares it (a typo? "
                                f"`python train.py --cfg job` lists every key)")
    assert not (tmp_path / "dry_run_config.yaml").exists()  # refused before the dry run started


def test_a_derived_dp_says_where_it_came_from(tmp_path):
    result = run_train("hardware=nvidia_h100", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert one_line(result) == (
        "error: train.micro_batch_size*dp=16 does not divide train.global_batch_size=8 (dp=8 derived: "
        "cluster.nnodes=1 x 8 devices per node of hardware=nvidia_h100 / tp*pp*cp=1; set "
        "cluster.devices_per_node or parallel.dp)")


def test_no_gpu_is_answered_before_launching(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_train("hardware=nvidia_h100", "cluster.devices_per_node=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert one_line(result) == (f"error: hardware.device=cuda but torch {torch.__version__} sees no CUDA GPU (built "
                                f"for CUDA None): install a CUDA build of torch or pick hardware=cpu")
    assert not (tmp_path / "worker_config.yaml").exists()  # no rank was started


def test_a_rank_config_error_is_a_config_error():
    assert rank_config_error("rank 3: ConfigError: rank 3 of this node has no GPU: 2 visible") == \
        "rank 3 of this node has no GPU: 2 visible"
    assert rank_config_error("rank 1: RuntimeError: injected fault at step 2") is None
    assert rank_config_error(None) is None
