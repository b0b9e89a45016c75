"""The project's strongest test: every layout trains the same model.

One `--multirun` sweep runs each layout as real worker processes on gloo
(same seed, same data, same global batch, fp32, 5 steps). Every layout's
per-step loss must match `single` within 1e-4 relative. The sweep ends with
mixexp.compare, whose table must repeat the summaries.
"""

import csv
import json

import pytest

from conftest import read_jsonl, run_layout_sweep

LAYOUTS = ["single", "tp2", "pp2", "ep2", "ep2_allgather", "cp2", "dp2", "tp2_pp2", "tp2_ep2", "tp2_ep2_etp1",
           "pp2_vpp2"]
STEPS = 5


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("layouts")
    jobs = run_layout_sweep(sweep_dir, LAYOUTS, f"train.iters={STEPS}", timeout=1500)
    return sweep_dir, jobs


def test_world_sizes(sweep):
    _, jobs = sweep
    worlds = {name: json.loads((job / "summary.json").read_text())["world_size"] for name, job in jobs.items()}
    assert worlds == {"single": 1, "tp2": 2, "pp2": 2, "ep2": 2, "ep2_allgather": 2, "cp2": 2, "dp2": 2,
                      "tp2_pp2": 4, "tp2_ep2": 4, "tp2_ep2_etp1": 2, "pp2_vpp2": 2}


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "single"])
def test_loss_matches_single(sweep, layout):
    _, jobs = sweep
    reference = [row["loss"] for row in read_jsonl(jobs["single"] / "metrics.jsonl")]
    losses = [row["loss"] for row in read_jsonl(jobs[layout] / "metrics.jsonl")]
    assert len(losses) == len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.1  # it trained, so the comparison means something
    for step, (got, want) in enumerate(zip(losses, reference), start=1):
        assert abs(got - want) <= 1e-4 * abs(want), f"{layout} step {step}: loss {got} vs single {want}"


def test_comparison_repeats_the_summaries(sweep):
    sweep_dir, jobs = sweep
    assert (sweep_dir / "comparison.png").stat().st_size > 10_000
    rows = list(csv.DictReader((sweep_dir / "comparison.csv").open()))
    assert len(rows) == len(LAYOUTS)
    by_job = {row["job"]: row for row in rows}
    for job in jobs.values():
        summary = json.loads((job / "summary.json").read_text())
        row = by_job[job.name]
        assert int(row["world_size"]) == summary["world_size"]
        assert float(row["tokens_per_sec_per_device"]) == pytest.approx(summary["tokens_per_sec_per_device"])
        assert float(row["final_loss"]) == pytest.approx(summary["final_loss"])
        assert row["status"] == "ok"
