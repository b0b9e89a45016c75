"""logger=wandb through train.py: each job of a sweep is an offline W&B run in the sweep's group."""

import json
import os

from conftest import run_train
from test_wandb_logger import items, of_type, read_records


def test_sweep_jobs_are_runs_in_one_group(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb_home"))
    sweep = tmp_path / "sweep"
    result = run_train("-m", "parallel=single,pp2", "data=synthetic", "train.iters=3", "logger=wandb",
                       "logger.project=mixexp-e2e", f"hydra.sweep.dir={sweep}", timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    groups = set()
    for job in sorted(p for p in sweep.iterdir() if (p / "summary.json").exists()):
        summary = json.loads((job / "summary.json").read_text())
        records = read_records(job)
        (run,) = of_type(records, "run")
        groups.add(run.run_group)
        assert run.project == "mixexp-e2e"
        config = items(run.config.update)
        assert {k: config[k] for k in ("tp", "pp", "ep", "cp", "dp", "vpp")} == summary["layout"]
        assert config["world_size"] == summary["world_size"]
        logged = {}
        for s in of_type(records, "summary"):
            logged.update(items(s.update))
        assert logged["tokens_per_sec_per_device"] == summary["tokens_per_sec_per_device"]
        assert logged["final_loss"] == summary["final_loss"]
        assert [items(h.item)["_step"] for h in of_type(records, "history")] == [1, 2, 3]
    assert groups == {"_".join(sweep.resolve().parts[-2:])}
