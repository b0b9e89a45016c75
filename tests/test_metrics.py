"""Reported throughput against its definitions: a unit test with unequal step times, and a real dp2 run."""

import json

import pytest

from conftest import read_jsonl, run_train
from mixexp.metrics import ThroughputModel, summarize

# mixtral_tiny at seq 128, by hand (Megatron's formula, mixexp.flops):
# per layer 12*h^2*(attention (1 + 4/8 + 128/(2*128)) * 1 + experts 256/128 * top-2 * 1.5) = 12*128^2*8
# = 1,572,864; 4 layers = 6,291,456; output layer 6*h*vocab = 6*128*32000 = 24,576,000.
TINY_FLOPS_PER_TOKEN_SEQ128 = 30_867_456
CPU_PEAK_FP32 = 1.37e11  # conf/hardware/cpu.yaml


def test_summary_of_unequal_steps_is_work_over_mean_step_time():
    model = ThroughputModel(tokens_per_step=1024, world_size=2, flops_per_token=TINY_FLOPS_PER_TOKEN_SEQ128,
                            peak_flops=CPU_PEAK_FP32)
    rows = [{"step": i + 1, "loss": 10.0 - i, "memory_gb": 0.5, **model.step_metrics(t)}
            for i, t in enumerate([5.0, 1.0, 3.0])]
    summary = summarize(rows, warmup_steps=1)  # steps 2 and 3: mean step 2.0 s
    assert summary["step_time_s"] == 2.0
    assert summary["tokens_per_sec"] == pytest.approx(512.0, rel=1e-12)  # not (1024 + 341.3) / 2 = 682.7
    assert summary["tokens_per_sec_per_device"] == pytest.approx(256.0, rel=1e-12)
    assert summary["tflops_per_device"] == pytest.approx(256.0 * 30_867_456 / 1e12, rel=1e-12)
    assert summary["mfu"] == pytest.approx(256.0 * 30_867_456 / 1.37e11, rel=1e-12)
    assert (summary["first_loss"], summary["final_loss"], summary["peak_memory_gb"]) == (10.0, 8.0, 0.5)


def test_summary_without_mfu_when_no_peak_is_known():
    rows = [{"step": 1, **ThroughputModel(1024, 1, 1.0, None).step_metrics(2.0)}]
    assert summarize(rows, warmup_steps=0)["mfu"] is None


@pytest.fixture(scope="module")
def dp2_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dp2")
    result = run_train("parallel=dp2", "data=synthetic", "train.iters=4", "train.warmup_steps=1",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_dp2_run_reports_numbers_by_their_definitions(dp2_run):
    tmp_path, _ = dp2_run
    summary = json.loads((tmp_path / "summary.json").read_text())
    steady = [r["step_time_s"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["step"] > 1]
    assert len(steady) == 3 and len(set(steady)) == 3  # real steps differ: mean of rates != rate of mean
    mean_step = sum(steady) / 3
    assert summary["world_size"] == 2 and summary["layout"]["dp"] == 2
    assert summary["step_time_s"] == pytest.approx(mean_step, rel=1e-12)
    assert summary["tokens_per_sec"] == pytest.approx(8 * 128 / mean_step, rel=1e-9)
    assert summary["tokens_per_sec_per_device"] == pytest.approx(8 * 128 / mean_step / 2, rel=1e-9)
    tflops = 8 * 128 / mean_step / 2 * TINY_FLOPS_PER_TOKEN_SEQ128 / 1e12
    assert summary["tflops_per_device"] == pytest.approx(tflops, rel=1e-9)
    assert summary["mfu"] == pytest.approx(tflops * 1e12 / CPU_PEAK_FP32, rel=1e-9)


def test_warnings_every_rank_prints_appear_once(dp2_run):
    _, result = dp2_run
    for message in ("`torch.distributed.reduce_scatter_tensor` is deprecated",
                    "`torch.distributed.all_gather_into_tensor` is deprecated",
                    "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed"):
        assert result.stderr.count(message) == 1, message
