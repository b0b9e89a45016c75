"""Dry runs build the busiest rank on the meta device: exact parameter counts for the published models."""

import json

import pytest

from conftest import compose, run_train
from mixexp.flops import params_total


@pytest.mark.parametrize("model, total", [("mixtral_8x7b", 46_702_792_704), ("mixtral_8x22b", 140_620_634_112)])
def test_analytic_parameter_totals(model, total):
    assert params_total(compose(f"model={model}").model) == total


def test_seed_layout_dry_run(tmp_path):
    """The README's command, with the 910B's defaults (bf16, the distributed optimizer over dp*cp = 4): it fits
    as the seed's experiment does (with fp32 and no distributed optimizer it would need 70.3 GB)."""
    result = run_train("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8",
                       "train.seq_length=32768", "train.global_batch_size=32", "train.micro_batch_size=1",
                       "train.dry_run=true", f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "dry_run"
    assert summary["params_total"] == 46_702_792_704
    assert summary["layout"] == {"tp": 8, "pp": 2, "ep": 1, "cp": 4, "dp": 1, "vpp": 1}
    assert summary["world_size"] == 64
    # Last stage: 16 layers split 8 ways (norms and router whole) + the untied output layer's shard.
    assert summary["params_per_rank_max"] == 2_919_501_824
    assert round(summary["peak_memory_gb"], 1) == 39.4
    assert "estimated 39.4 GB per device of 64.0 GB (fits)" in result.stdout


def test_8x22b_dry_run(tmp_path):
    result = run_train("model=mixtral_8x22b", "parallel=tp2_pp8_ep8_vpp7", "hardware=nvidia_h100",
                       "cluster.nnodes=16", "train.seq_length=4096", "train.global_batch_size=256",
                       "train.micro_batch_size=1", "train.precision=bf16", "train.dry_run=true",
                       f"hydra.run.dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["params_total"] == 140_620_634_112
    assert summary["world_size"] == 128


def test_a_dry_run_that_does_not_fit_says_by_how_much_and_what_would_fit(tmp_path):
    """fp32 without the distributed optimizer (the old 910B defaults): exit 1, status does_not_fit, and the
    single changes that fit, fastest first by the planner's time model, with the memory each leaves."""
    result = run_train("model=mixtral_8x7b", "parallel=tp8_pp2_cp4", "hardware=ascend_910b", "cluster.nnodes=8",
                       "train.seq_length=32768", "train.global_batch_size=32", "train.micro_batch_size=1",
                       "train.precision=fp32", "parallel.distributed_optimizer=false", "train.dry_run=true",
                       f"hydra.run.dir={tmp_path}", timeout=300)
    advice = ("needs 70.3 GB per device of 64.0 GB (6.3 GB over); fits with train.precision=bf16 (63.8 GB), "
              "or parallel.distributed_optimizer=true (54.0 GB), or train.recompute=full (48.7 GB); or a layout "
              "from the planner: python -m mixexp.plan model=mixtral_8x7b hardware=ascend_910b cluster.nnodes=8 "
              "train.seq_length=32768 train.global_batch_size=32")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: does not fit: {advice}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["error"]) == ("does_not_fit", advice)
    assert round(summary["peak_memory_gb"], 1) == 70.3
