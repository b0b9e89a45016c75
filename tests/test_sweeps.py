"""The sweep files in sweeps/sweep/ compose against conf/ and every job's layout validates."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import mixexp.config  # noqa: F401 - registers the schemas
from mixexp.layout import validate

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml"))
# conf/train.yaml puts `pkg://sweeps` on the search path; these overrides hold with or without that
# line: in-process by file path (whatever sys.path pytest was started with), subprocesses as train.yaml does.
SEARCHPATH = f"hydra.searchpath=[file://{REPO / 'sweeps'}]"
PKG_SEARCHPATH = "hydra.searchpath=[pkg://sweeps]"


def compose_job(sweep: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"+sweep={sweep}", SEARCHPATH, *overrides], return_hydra_config=True)


def test_all_three_sweeps_exist():
    assert {"cpu_layouts", "mixtral_8x7b_64npu", "mixtral_8x22b_128gpu"} <= set(SWEEPS)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_composes_with_its_own_dir_group_and_layouts(sweep: str):
    cfg = compose_job(sweep)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweep.dir.startswith(f"multirun/{sweep}/")
    assert cfg.logger.group == sweep
    layouts = cfg.hydra.sweeper.params.parallel.split(",")
    assert len(layouts) >= 3 and all((REPO / "conf" / "parallel" / f"{name}.yaml").is_file() for name in layouts)


@pytest.mark.parametrize("sweep", ["mixtral_8x7b_64npu", "mixtral_8x22b_128gpu"])
def test_every_cluster_job_is_a_valid_layout(sweep: str):
    cfg = compose_job(sweep)
    expected_world = {"mixtral_8x7b_64npu": 64, "mixtral_8x22b_128gpu": 128}[sweep]
    for name in cfg.hydra.sweeper.params.parallel.split(","):
        job = compose_job(sweep, f"parallel={name}")
        assert job.parallel.name == name
        assert validate(job).world_size == expected_world, name


def test_callback_config_instantiates():
    from hydra.utils import instantiate

    from mixexp.hydra_callbacks import CompareOnMultirunEnd

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/callbacks=compare"], return_hydra_config=True)
    assert isinstance(instantiate(cfg.hydra.callbacks.compare), CompareOnMultirunEnd)


APP = '''
import json, sys
import csv
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
import mixexp.config
from mixexp.layout import validate

@hydra.main(version_base="1.3", config_path=sys.argv.pop(1), config_name="train")
def main(cfg):
    layout = validate(cfg)
    summary = {"status": "ok", "layout": layout.as_dict(), "world_size": layout.world_size,
               "tokens_per_sec_per_device": 100.0 * layout.world_size, "peak_memory_gb": 1.0}
    (Path(HydraConfig.get().runtime.output_dir) / "summary.json").write_text(json.dumps(summary))

main()
'''


def test_multirun_from_elsewhere_ends_with_a_comparison(tmp_path: Path):
    """`+sweep=NAME` found through pkg://sweeps from another directory; the callback writes the comparison."""
    import os
    import subprocess
    import sys

    app = tmp_path / "app.py"
    app.write_text(APP)
    sweep_dir = tmp_path / "out"
    cmd = [sys.executable, str(app), str(REPO / "conf"), "+sweep=cpu_layouts", PKG_SEARCHPATH, "hydra/callbacks=compare",
           "hydra.sweeper.params.parallel='single,tp2_pp2,dp2'", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0_single", "1_tp2_pp2", "2_dp2"]
    assert (sweep_dir / "comparison.png").is_file()
    lines = (sweep_dir / "comparison.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in lines[1:]] == ["tp2_pp2", "dp2", "single"]


def test_run_and_job_dirs_name_the_layout_that_runs():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["parallel=tp2_pp2", "parallel.pp=1", "parallel.ep=2"],
                      return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith("_mixtral_tiny_tp2_ep2_dp2")  # dp derived: experts fold over tp*dp
    cfg.hydra.job.num = 7  # set by the sweeper for each job
    assert cfg.hydra.sweep.subdir == "7_tp2_ep2_dp2"


def test_a_key_override_sweep_names_its_jobs_by_their_layouts(tmp_path: Path):
    """`-m parallel.tp=3,2`: job dirs 0_tp3 and 1_tp2 (not 0_single, 1_single), and so are the table's labels."""
    from conftest import run_train

    result = run_train("-m", "parallel.tp=3,2", "train.dry_run=true", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]  # the tp=3 job is invalid; the sweep goes on
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0_tp3", "1_tp2"]
    rows = {r["label"]: r for r in csv.DictReader((tmp_path / "comparison.csv").open())}
    assert rows["tp3"]["status"] == "failed"
    assert rows["tp3"]["error"] == "parallel.tp=3 does not divide model.num_attention_heads=8"
    assert rows["tp2"]["status"] == "dry_run" and rows["tp2"]["job"] == "1_tp2"
