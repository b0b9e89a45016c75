"""WandbLogger offline: the run file holds the group, the layout config keys and the summary;
a failing W&B never raises into training."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from mixexp import wandb_logger
from mixexp.wandb_logger import WandbLogger, log_comparison_table, resolve_mode

LAYOUT = {"tp": 2, "pp": 2, "ep": 1, "cp": 1, "dp": 1, "vpp": 1, "world_size": 4}
SUMMARY = {"tokens_per_sec": 812.5, "tokens_per_sec_per_device": 203.125, "step_time_s": 0.63, "mfu": 0.0123,
           "tflops_per_device": 0.0042, "peak_memory_gb": 1.75, "first_loss": 10.4, "final_loss": 9.1}


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path, monkeypatch):
    """No key, no mode: the logger must pick offline. Keep W&B's own files in tmp_path."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


def read_records(run_dir: Path, timeout_s: float = 30.0) -> list:
    """The offline run's records, once wandb-core (a separate process, writing after finish()
    returns) has written the final `exit` record."""
    deadline = time.monotonic() + timeout_s
    while True:
        paths = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(paths) <= 1, paths
        records = decode_run_file(paths[0]) if paths else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def decode_run_file(path: Path) -> list:
    """Decode a run-*.wandb file: W&B's leveldb-style log (7-byte header, 32 KiB blocks,
    chunks of crc32/length/type) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def of_type(records, kind):
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def items(updates):
    """Summary/config/history items as {key: decoded value}."""
    return {(u.key or ".".join(u.nested_key)): json.loads(u.value_json) for u in updates}


def test_resolve_mode(monkeypatch):
    assert resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(None) == "offline"


def test_offline_run_has_group_layout_config_and_summary(tmp_path: Path):
    run_dir = tmp_path / "multirun" / "0_tp2_pp2"
    logger = WandbLogger(project="mixexp-test", group="cpu_layouts", name="tp2_pp2",
                         config={"model": {"name": "mixtral_tiny"}, "train": {"iters": 3}}, layout=LAYOUT,
                         run_dir=str(run_dir), tags=("cpu",))
    assert logger.enabled and logger.mode == "offline"
    for step in (1, 2, 3):
        logger.log_step(step, {"loss": 10.0 - step, "tokens_per_sec": 100.0 * step})
    logger.finish(SUMMARY, status="ok")
    assert not logger.enabled
    logger.log_step(4, {"loss": 0.0})  # after finish: a no-op, not an error

    records = read_records(run_dir)
    (run,) = of_type(records, "run")
    assert run.run_group == "cpu_layouts" and run.project == "mixexp-test" and run.display_name == "tp2_pp2"
    assert run.job_type == "train" and list(run.tags) == ["cpu"]
    config = items(run.config.update)
    for key, value in LAYOUT.items():
        assert config[key] == value, key
    assert config["model"] == {"name": "mixtral_tiny"}

    summary = {}
    for s in of_type(records, "summary"):
        summary.update(items(s.update))
    for key, value in SUMMARY.items():
        assert summary[key] == pytest.approx(value), key
    assert summary["status"] == "ok"

    steps = [items(h.item) for h in of_type(records, "history")]
    assert [h["_step"] for h in steps] == [1, 2, 3]
    assert [h["loss"] for h in steps] == [9.0, 8.0, 7.0]
    (exit_record,) = of_type(records, "exit")
    assert exit_record.exit_code == 0


def test_failed_status_exits_nonzero(tmp_path: Path):
    logger = WandbLogger("mixexp-test", None, "bad", {}, LAYOUT, str(tmp_path))
    logger.finish({"error": "rank 3 crashed"}, status="failed")
    records = read_records(tmp_path)
    summary = {}
    for s in of_type(records, "summary"):
        summary.update(items(s.update))
    assert summary["status"] == "failed" and summary["error"] == "rank 3 crashed"
    assert of_type(records, "exit")[0].exit_code == 1


def test_init_failure_never_raises(tmp_path: Path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise wandb.errors.CommError("W&B unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B init failed.*unreachable"):
        logger = WandbLogger("p", "g", "n", {}, LAYOUT, str(tmp_path), mode="online")
    assert not logger.enabled
    logger.log_step(1, {"loss": 1.0})
    logger.finish(SUMMARY, status="ok")


def test_invalid_mode_never_raises(tmp_path: Path):
    with pytest.warns(RuntimeWarning, match="W&B init failed"):
        logger = WandbLogger("p", "g", "n", {}, LAYOUT, str(tmp_path), mode="no-such-mode")
    assert not logger.enabled


def test_log_and_finish_errors_warn_once_and_disable(tmp_path: Path, recwarn):
    class BrokenRun:
        def __init__(self):
            self.calls = 0

        def log(self, *args, **kwargs):
            self.calls += 1
            raise ConnectionError("socket closed")

    logger = WandbLogger("p", "g", "n", {}, LAYOUT, str(tmp_path), mode="disabled")
    assert not logger.enabled
    logger.run = broken = BrokenRun()
    for step in range(5):
        logger.log_step(step, {"loss": 1.0})
    assert broken.calls == 1 and not logger.enabled
    assert len([w for w in recwarn if "W&B log failed" in str(w.message)]) == 1

    class BrokenSummary:
        summary = None  # .update raises AttributeError

    logger.run = BrokenSummary()
    logger.finish(SUMMARY, status="ok")
    assert not logger.enabled


def test_disabled_mode_does_not_import_wandb(tmp_path: Path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        assert name != "wandb", "wandb imported in disabled mode"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    logger = WandbLogger("p", "g", "n", {}, LAYOUT, str(tmp_path), mode="disabled")
    logger.log_step(1, {"loss": 1.0})
    logger.finish(SUMMARY, "ok")
    assert log_comparison_table([{"label": "x"}], "p", "g", mode="disabled") is False


def test_comparison_table_offline(tmp_path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "comparison.png"
    plt.figure(figsize=(2, 1)).savefig(png)
    rows = [{"rank": 1, "label": "dp2", "status": "ok", "tokens_per_sec_per_device": 300.0, "error": None,
             "overrides": ["parallel=dp2"]},
            {"rank": 2, "label": "cp2", "status": "failed", "tokens_per_sec_per_device": None,
             "error": "no summary.json", "overrides": ["parallel=cp2", "+sweep=cpu_layouts"]}]
    assert log_comparison_table(rows, project="mixexp-test", group="cpu_layouts", run_dir=str(tmp_path), png=png)
    records = read_records(tmp_path)
    (run,) = of_type(records, "run")
    assert run.run_group == "cpu_layouts" and run.job_type == "compare"
    logged = {}
    for h in of_type(records, "history"):
        logged.update(items(h.item))
    assert logged["comparison._type"] == "table-file" and logged["comparison.nrows"] == 2
    assert logged["comparison_chart._type"] == "image-file"
    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/media/table/comparison_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(rows[0])
    assert table["data"] == [[1, "dp2", "ok", 300.0, None, "parallel=dp2"],
                             [2, "cp2", "failed", None, "no summary.json", "parallel=cp2 +sweep=cpu_layouts"]]


def test_comparison_table_failure_returns_false(tmp_path: Path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.warns(RuntimeWarning, match="comparison table not logged"):
        assert log_comparison_table([{"label": "x"}], "p", "g", run_dir=str(tmp_path)) is False


def test_layout_keys_cover_the_contract():
    assert wandb_logger.LAYOUT_KEYS == ("tp", "pp", "ep", "cp", "dp", "vpp", "world_size")


def test_compare_logs_its_table_in_the_sweep_group(tmp_path: Path):
    from test_compare import make_job, summary

    from mixexp.compare import compare

    sweep = tmp_path / "sweep"
    make_job(sweep, "0_tp2", ["parallel=tp2", "logger=wandb"], summary(tp=2, tps=50.0), logger="wandb")
    make_job(sweep, "1_dp2", ["parallel=dp2", "logger=wandb"], summary(dp=2, tps=80.0), logger="wandb")
    make_job(sweep, "2_ep2", ["parallel=ep2", "logger=wandb"], None, logger="wandb")
    compare(sweep, show=False)
    (run,) = of_type(read_records(sweep), "run")
    assert run.run_group == "g-tp2" and run.project == "mixexp-test" and run.job_type == "compare"
    (table_file,) = sweep.glob("wandb/offline-run-*/files/media/table/comparison_*.table.json")
    table = json.loads(table_file.read_text())
    label, tps = table["columns"].index("label"), table["columns"].index("tokens_per_sec_per_device")
    assert [(r[label], r[tps]) for r in table["data"]] == [("dp2", 80.0), ("tp2", 50.0), ("ep2", None)]
