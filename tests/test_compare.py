"""mixexp.compare on synthetic sweep directories, and the Hydra callback that runs it."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mixexp import compare as cmp
from mixexp.hydra_callbacks import CompareOnMultirunEnd

REPO = Path(__file__).resolve().parents[1]


def summary(tp=1, pp=1, ep=1, cp=1, dp=1, vpp=1, tps=100.0, **extra):
    world = tp * pp * cp * dp
    return {"status": "ok", "layout": {"tp": tp, "pp": pp, "ep": ep, "cp": cp, "dp": dp, "vpp": vpp},
            "world_size": world, "params_total": 1_000_000, "params_per_rank_max": 1_000_000 // (tp * pp),
            "tokens_per_sec": tps * world, "tokens_per_sec_per_device": tps, "step_time_s": 2048 / (tps * world),
            "tflops_per_device": tps * 1e-3, "mfu": tps * 1e-4, "peak_memory_gb": 1.5 / (tp * pp),
            "first_loss": 10.4, "final_loss": 9.5 + 1 / tps, **extra}


def make_job(sweep: Path, name: str, overrides: list[str], summary: dict | None, logger: str = "console") -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"logger": {"name": logger, "project": "mixexp-test", "group": "g-${parallel.name}"},
              "parallel": {"name": name.split("_", 1)[1]}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


SUMMARIES = {
    "0_tp2_pp2": summary(tp=2, pp=2, tps=150.0),
    "1_dp2": summary(dp=2, tps=300.0),
    "2_single": summary(tps=250.0),
    "3_ep2": {"status": "failed", "error": "parallel.ep=2 does not divide tp*cp*dp=1"},
    "4_cp2": None,  # crashed before writing summary.json
}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "cpu_layouts" / "2026-01-01_00-00-00"
    for name, s in SUMMARIES.items():
        make_job(root, name, [f"parallel={name.split('_', 1)[1]}", "+sweep=cpu_layouts"], s)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def by_label(rows):
    return {r["label"]: r for r in rows}


def test_rows_equal_summaries_ranked_with_ratios(sweep: Path):
    rows = cmp.collect_rows(sweep)
    assert [r["label"] for r in rows] == ["dp2", "single", "tp2_pp2", "ep2", "cp2"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows[:3]:
        s = SUMMARIES[r["job"]]
        for key in cmp.METRIC_KEYS:
            assert r[key] == s[key], key
        for key in cmp.LAYOUT_KEYS:
            assert r[key] == s["layout"][key], key
        assert r["status"] == "ok" and r["error"] is None
    assert [r["ratio_to_best"] for r in rows[:3]] == [1.0, 250 / 300, 150 / 300]
    failed = by_label(rows)
    assert failed["ep2"]["status"] == "failed"
    assert failed["ep2"]["error"] == "parallel.ep=2 does not divide tp*cp*dp=1"
    assert failed["cp2"]["status"] == "failed" and failed["cp2"]["error"] == "no summary.json"
    assert failed["ep2"]["ratio_to_best"] is None and failed["cp2"]["tokens_per_sec_per_device"] is None


def test_compare_writes_csv_png_and_prints_table(sweep: Path, capsys):
    rows = cmp.compare(sweep, wandb=False)
    out = capsys.readouterr().out
    for label in ("dp2", "single", "tp2_pp2", "ep2", "cp2", "no summary.json", "1.00x", "0.83x", "0.50x"):
        assert label in out
    assert out.index("dp2") < out.index("single") < out.index("tp2_pp2") < out.index("no summary.json")

    with open(sweep / "comparison.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["label"] for t in table] == [r["label"] for r in rows]
    assert list(table[0]) == list(cmp.CSV_COLUMNS)
    for t in table[:3]:
        s = SUMMARIES[t["job"]]
        for key in ("tokens_per_sec_per_device", "step_time_s", "tflops_per_device", "mfu", "peak_memory_gb",
                    "final_loss"):
            assert float(t[key]) == s[key], key
        assert int(t["world_size"]) == s["world_size"]
        assert t["status"] == "ok" and t["error"] == ""
    assert float(table[2]["ratio_to_best"]) == 0.5
    assert table[4]["status"] == "failed" and table[4]["error"] == "no summary.json"
    assert table[4]["tokens_per_sec_per_device"] == "" and table[4]["overrides"] == "parallel=cp2 +sweep=cpu_layouts"

    png = (sweep / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert 800 <= width <= 2000 and 250 <= height <= 1200
    import matplotlib.image

    assert matplotlib.image.imread(sweep / "comparison.png").shape[:2] == (height, width)
    assert not list(sweep.glob(".comparison*")), "temporary files left behind"


def test_labels_add_overrides_when_layouts_repeat(tmp_path: Path):
    make_job(tmp_path, "0_tp2", ["parallel=tp2", "parallel.dispatcher=allgather"], summary(tp=2, tps=10.0))
    make_job(tmp_path, "1_tp2", ["parallel=tp2", "parallel.dispatcher=alltoall", "model=a"], summary(tp=2, tps=20.0))
    make_job(tmp_path, "2_tp2", ["parallel=tp2", "model=b"], summary(tp=2, tps=30.0))
    make_job(tmp_path, "3_pp2", ["parallel=pp2", "model=b"], summary(pp=2, tps=40.0))
    make_job(tmp_path, "4_tp2", ["parallel=tp2", "model=b"], summary(tp=2, tps=35.0))
    labels = [r["label"] for r in cmp.collect_rows(tmp_path)]
    assert labels == ["pp2", "tp2 model=b (4_tp2)", "tp2 model=b (2_tp2)",
                      "tp2 model=a parallel.dispatcher=alltoall", "tp2 parallel.dispatcher=allgather"]


def test_single_run_dir_and_dry_run_rows(tmp_path: Path):
    job = make_job(tmp_path, "0_tp8_pp2_cp4", ["parallel=tp8_pp2_cp4"],
                   {"status": "dry_run", "layout": {"tp": 8, "pp": 2, "ep": 1, "cp": 4, "dp": 1, "vpp": 1},
                    "world_size": 64, "params_total": 46_702_792_704, "params_per_rank_max": 2_919_000_000})
    rows = cmp.collect_rows(job)
    assert len(rows) == 1 and rows[0]["label"] == "tp8_pp2_cp4" and rows[0]["status"] == "dry_run"
    assert rows[0]["params_total"] == 46_702_792_704 and rows[0]["ratio_to_best"] is None
    cmp.compare(job, wandb=False, show=False)
    assert (job / "comparison.png").stat().st_size > 1000
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(cmp.render_table(rows, "dry"))
    text = console.export_text()
    assert "params/rank" in text and "2.92B" in text and "dry_run" in text


def test_bad_input_exits_2_with_one_line(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "mixexp.compare", str(tmp_path / "nope")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"compare: error: no such directory: {tmp_path / 'nope'}"

    (tmp_path / "empty").mkdir()
    with pytest.raises(cmp.CompareError, match="no job directories"):
        cmp.compare(tmp_path / "empty", wandb=False)


def test_main_ok_and_error(sweep: Path, tmp_path: Path, capsys):
    assert cmp.main([str(sweep), "--no-wandb"]) == 0
    assert "dp2" in capsys.readouterr().out
    assert cmp.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err


def test_wandb_table_only_when_the_sweep_used_wandb(sweep: Path, tmp_path: Path, monkeypatch):
    calls = []
    monkeypatch.setattr("mixexp.wandb_logger.log_comparison_table", lambda rows, **kw: calls.append(kw) or True)
    cmp.compare(sweep, show=False)  # logger=console: auto means no W&B
    assert calls == []
    cmp.compare(sweep, wandb=True, show=False)
    assert calls[-1]["group"] == "cpu_layouts_2026-01-01_00-00-00" and calls[-1]["project"] == "mixexp"

    wb = tmp_path / "wb_sweep"
    make_job(wb, "0_tp2", ["parallel=tp2", "logger=wandb"], summary(tp=2), logger="wandb")
    cmp.compare(wb, show=False)
    assert calls[-1]["project"] == "mixexp-test" and calls[-1]["group"] == "g-tp2"
    assert calls[-1]["run_dir"] == str(wb) and Path(calls[-1]["png"]).name == "comparison.png"
    n = len(calls)
    cmp.compare(wb, wandb=False, show=False)
    assert len(calls) == n

    (wb / "0_tp2" / ".hydra" / "config.yaml").write_text("logger: {name: wandb, group: null}\n")
    cmp.compare(wb, show=False)  # no group in the config: the same default name the jobs use
    assert calls[-1]["group"] == f"{tmp_path.name}_wb_sweep" and calls[-1]["project"] == "mixexp"


def test_callback_runs_compare_and_never_raises(sweep: Path, tmp_path: Path, capsys):
    callback = CompareOnMultirunEnd(wandb=False)
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "comparison.csv").is_file() and (sweep / "comparison.png").is_file()
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))
    assert "warning: comparison of the sweep failed" in capsys.readouterr().err
    callback.on_multirun_end(OmegaConf.create({}))  # no hydra node at all
    assert "warning" in capsys.readouterr().err


def test_modules_import_without_wandb_matplotlib_rich():
    code = ("import sys, mixexp.compare, mixexp.wandb_logger, mixexp.hydra_callbacks; "
            "print(sorted(m for m in ('wandb', 'matplotlib', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_row_that_does_not_fit_says_by_how_much(tmp_path: Path):
    advice = "needs 70.3 GB per device of 64.0 GB (6.3 GB over); fits with train.recompute=full (48.7 GB)"
    make_job(tmp_path, "0_tp8_pp2_cp4", ["parallel=tp8_pp2_cp4"],
             {"status": "does_not_fit", "error": advice, "layout": {"tp": 8, "pp": 2, "ep": 1, "cp": 4, "dp": 1,
                                                                    "vpp": 1},
              "world_size": 64, "params_per_rank_max": 2_919_501_824, "peak_memory_gb": 70.3})
    make_job(tmp_path, "1_tp8_cp4", ["parallel=tp8_cp4"], {**summary(tp=8, cp=4), "status": "dry_run"})
    rows = cmp.compare(tmp_path, wandb=False)
    assert [(r["label"], r["status"], r["error"]) for r in rows] == \
        [("tp8_cp4", "dry_run", None), ("tp8_pp2_cp4", "does_not_fit", advice)]
    status_cells = list(cmp.render_table(rows, "t").columns[-1].cells)
    assert status_cells == ["dry_run", f"does not fit: {advice}"]


def test_the_picture_names_the_workload_and_marks_device_capacity(tmp_path: Path):
    config = {"model": {"name": "mixtral_8x7b"}, "hardware": {"name": "ascend_910b", "memory_gb": 64.0,
                                                              "default_precision": "bf16"},
              "train": {"seq_length": 32768, "global_batch_size": 32, "precision": "${hardware.default_precision}"}}
    for name, s in (("0_tp8_cp4", summary(tp=8, cp=4)), ("1_tp8_pp2_cp4", summary(tp=8, pp=2, cp=4))):
        job = make_job(tmp_path, name, [f"parallel={name.split('_', 1)[1]}"], s)
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    import datetime
    import os

    os.utime(tmp_path / "0_tp8_cp4" / ".hydra" / "config.yaml", (0, 1_780_000_000))  # the first job's date
    what = cmp.workload(cmp.find_job_dirs(tmp_path))
    assert cmp.workload_title(what) == \
        f"mixtral_8x7b, seq 32768, global batch 32, ascend_910b, bf16, {datetime.date.fromtimestamp(1_780_000_000)}"
    fig = cmp.write_png(cmp.collect_rows(tmp_path), tmp_path / "c.png", "title", capacity_gb=64.0)
    capacity_line = fig.axes[1].lines[0]
    assert list(capacity_line.get_xdata()) == [64.0, 64.0]
    assert any(t.get_text() == " device capacity 64 GB" for t in fig.axes[1].texts)
