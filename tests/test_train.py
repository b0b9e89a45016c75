"""A real short training run: megatron-core GPTModel with MoE on the bundled sample, loss falls."""

import json

import pytest

from conftest import read_jsonl, run_train
from mixexp.report import SUMMARY_KEYS

METRIC_KEYS = {"step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_sec", "tokens_per_sec_per_device",
               "tflops_per_device", "mfu", "memory_gb"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default_run")
    result = run_train("train.iters=12", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_loss_falls_on_the_sample_data(default_run):
    run_dir, _ = default_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    # The Mixtral vocabulary starts near ln(32000) = 10.37 and must drop measurably in 12 steps.
    assert 10.0 < first < 10.7
    assert last < first - 0.3


def test_metrics_rows_have_the_contract_keys(default_run):
    run_dir, _ = default_run
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        assert set(row) == METRIC_KEYS
        assert row["tokens_per_sec"] == pytest.approx(8 * 128 / row["step_time_s"])
        assert row["tokens_per_sec_per_device"] == pytest.approx(row["tokens_per_sec"])
        assert row["memory_gb"] > 0.1


def test_summary_has_exactly_the_contract_keys(default_run):
    run_dir, _ = default_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == set(SUMMARY_KEYS) - {"error"}
    assert summary["status"] == "ok"
    assert summary["layout"] == {"tp": 1, "pp": 1, "ep": 1, "cp": 1, "dp": 1, "vpp": 1}
    assert summary["world_size"] == 1
    assert summary["params_total"] == summary["params_per_rank_max"] == 11_539_584
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steady = [r["step_time_s"] for r in rows if r["step"] > 2]
    assert summary["step_time_s"] == pytest.approx(sum(steady) / len(steady))
    assert summary["first_loss"] == rows[0]["loss"] and summary["final_loss"] == rows[-1]["loss"]


def test_console_shows_progress(default_run):
    _, result = default_run
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 12
    for word in ("loss", "lr", "grad", "tok/s", "tok/s/dev", "TFLOP/s/dev", "MFU", "mem", "ETA"):
        assert word in lines[-1]
