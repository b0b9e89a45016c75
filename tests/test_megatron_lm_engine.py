"""engine=megatron_lm: the log parser on Megatron-format lines, and launching end to end.

The end-to-end tests run a STAND-IN `pretrain_gpt.py` (written to a temp dir below), not
Megatron-LM: it prints lines in the format of Megatron-LM core_r0.8.0's `training_log`
and records the argv, cwd and environment it was started with. The claim under test is
our launching (torchrun, arguments, environment), tee and parsing, not Megatron's training.
"""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl

from mixexp.engines.megatron_lm import COMMAND_NAME, LOG_NAME, LogParser, entrypoint, parse_iteration_line, \
    run_megatron_lm
from mixexp.errors import ConfigError
from mixexp.layout import validate
from mixexp.megatron_args import compose, io_args, render

# Lines as Megatron-LM core_r0.8.0's training_log / report_memory / get_model print them
# (numbers of a Mixtral-8x7B TP8 PP2 CP4 run on 64 devices).
MEGATRON_LINES = [
    " > number of parameters on (tensor, pipeline) model parallel rank (3, 1): 2931888128",
    " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 2963345408",
    " [2026-11-28 10:00:41] iteration        1/    2000 | consumed samples:           32 | elapsed time per "
    "iteration (ms): 41873.2 | throughput per GPU (TFLOP/s/GPU): 86.3 | learning rate: 5.000000E-06 | global "
    "batch size:    32 | lm loss: 1.064553E+01 | load_balancing_loss: 1.004821E+00 | loss scale: 1.0 | grad norm: "
    "31.275 | number of skipped iterations:   0 | number of nan iterations:   0 |",
    "[Rank 0] (after 1 iterations) memory (MB) | allocated: 23517.4 | max allocated: 41022.9 | reserved: 45120.0 | "
    "max reserved: 45120.0",
    " [2026-11-28 10:01:02] iteration        2/    2000 | consumed samples:           64 | elapsed time per "
    "iteration (ms): 20912.6 | throughput per GPU (TFLOP/s/GPU): 172.8 | learning rate: 1.000000E-05 | global "
    "batch size:    32 | lm loss: 1.058123E+01 | load_balancing_loss: 1.003114E+00 | loss scale: 1.0 | grad norm: "
    "28.901 | number of skipped iterations:   0 | number of nan iterations:   0 |",
    "validation loss at iteration 2 on validation set | lm loss value: 1.049000E+01 | lm loss PPL: 3.600000E+04 | ",
]


def _parser(world=64, peak=3.54e14, flops_per_token=1.0e12):
    return LogParser(seq_length=32768, global_batch_size=32, world_size=world, flops_per_token=flops_per_token,
                     peak_flops=peak)


def test_iteration_line_fields():
    fields = parse_iteration_line(MEGATRON_LINES[2])
    assert fields == {"iteration": 1, "train_iters": 2000, "consumed samples": 32.0,
                      "elapsed time per iteration (ms)": 41873.2, "throughput per GPU (TFLOP/s/GPU)": 86.3,
                      "learning rate": 5e-06, "global batch size": 32.0, "lm loss": 10.64553,
                      "load_balancing_loss": 1.004821, "loss scale": 1.0, "grad norm": 31.275,
                      "number of skipped iterations": 0.0, "number of nan iterations": 0.0}
    assert parse_iteration_line(MEGATRON_LINES[0]) is None
    assert parse_iteration_line(MEGATRON_LINES[5]) is None  # validation, not an iteration


def test_parser_turns_a_megatron_log_into_metrics_rows():
    parser = _parser()
    rows = [r for r in (parser.feed(line) for line in MEGATRON_LINES) if r is not None]
    assert [r["step"] for r in rows] == [1, 2]
    first, second = rows
    assert first["loss"] == 10.64553 and first["lr"] == 5e-06 and first["grad_norm"] == 31.275
    assert first["step_time_s"] == pytest.approx(41.8732)
    assert first["tokens_per_sec"] == pytest.approx(32 * 32768 / 41.8732)
    assert first["tokens_per_sec_per_device"] == pytest.approx(32 * 32768 / 41.8732 / 64)
    assert first["tflops_per_device"] == 86.3  # Megatron's own figure when it logs one
    assert first["mfu"] == pytest.approx(86.3e12 / 3.54e14)
    assert first["memory_gb"] is None  # Megatron reports memory after the first iteration line
    assert second["memory_gb"] == pytest.approx(41022.9 / 1024)
    assert second["tflops_per_device"] == 172.8 and second["mfu"] == pytest.approx(172.8e12 / 3.54e14)
    assert parser.params_per_rank_max == 2963345408
    assert set(first) == {"step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_sec",
                          "tokens_per_sec_per_device", "tflops_per_device", "mfu", "memory_gb"}


def test_parser_without_throughput_uses_the_flops_formula_and_reads_prefixed_lines():
    """MindSpeed-LLM without --log-throughput, through torchrun --tee (rank prefixes), decoupled lr."""
    line = ("[default7]: [2026-11-28 10:02:00] iteration       10/    2000 | consumed samples:          320 | "
            "elapsed time per iteration (ms): 20000.0 | learning rate: 9.999939E-06 | decoupled learning rate: "
            "1.000000E-04 | global batch size:    16 | lm loss: 7.123456E+00 | loss scale: 1.0 | "
            "number of skipped iterations:   0 | number of nan iterations:   0 |")
    row = _parser(flops_per_token=2.0e11).feed(line)
    assert row["step"] == 10 and row["lr"] == 9.999939e-06 and row["grad_norm"] is None
    tokens_per_device = 16 * 32768 / 20.0 / 64
    assert row["tokens_per_sec_per_device"] == pytest.approx(tokens_per_device)
    assert row["tflops_per_device"] == pytest.approx(tokens_per_device * 2.0e11 / 1e12)
    assert _parser(peak=None).feed(line)["mfu"] is None


def test_parser_reads_records_that_two_ranks_wrote_into_one_line():
    """Unbuffered ranks share stdout: rank 0's line can land before the last rank's newline (seen in CI)."""
    parser = _parser()
    joined = MEGATRON_LINES[2] + MEGATRON_LINES[1]
    row = parser.feed(joined)
    assert row["step"] == 1 and row["loss"] == 10.64553 and row["grad_norm"] == 31.275
    assert parser.params_per_rank_max == 2963345408
    row = parser.feed(MEGATRON_LINES[3] + MEGATRON_LINES[4])  # memory report, then an iteration line
    assert row["step"] == 2 and row["memory_gb"] == pytest.approx(41022.9 / 1024)


def test_parser_keeps_the_first_error():
    parser = _parser()
    for line in ["[rank3]: Traceback (most recent call last):",
                 "[rank3]: AssertionError: seq-length should be a multiple of 2 * context-parallel-size",
                 "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
                 "RuntimeError: later"]:
        parser.feed(line)
    assert parser.first_error == "AssertionError: seq-length should be a multiple of 2 * context-parallel-size"


# --- configuration errors ------------------------------------------------------------------------

def test_engine_path_errors(tmp_path):
    cfg = compose(["engine=megatron_lm"])
    with pytest.raises(ConfigError) as e:
        entrypoint(cfg.engine)
    assert str(e.value) == ("engine=megatron_lm needs engine.path: the Megatron-LM or MindSpeed-LLM checkout that "
                            "holds pretrain_gpt.py (engine.path=/path/to/MindSpeed-LLM)")
    with pytest.raises(ConfigError) as e:
        entrypoint(compose(["engine=megatron_lm", f"engine.path={tmp_path / 'nope'}"]).engine)
    assert str(e.value) == (f"engine.path={tmp_path / 'nope'} is not a directory: point it at a Megatron-LM or "
                            f"MindSpeed-LLM checkout")
    with pytest.raises(ConfigError) as e:
        entrypoint(compose(["engine=megatron_lm", f"engine.path={tmp_path}"]).engine)
    assert str(e.value) == (f"engine.path={tmp_path} has no pretrain_gpt.py: point engine.path at the checkout's "
                            f"root or set engine.entrypoint")


def test_instruction_data_is_refused(tmp_path):
    (tmp_path / "pretrain_gpt.py").write_text("")
    cfg = compose(["engine=megatron_lm", f"engine.path={tmp_path}", "data=alpaca"])
    with pytest.raises(ConfigError) as e:
        run_megatron_lm(cfg, validate(cfg), tmp_path / "run")
    assert str(e.value) == ("engine=megatron_lm pretrains on indexed or synthetic data; data=alpaca is instruction "
                            "data (data.kind=instruction): use engine=native")


# --- end to end, with a stand-in pretrain_gpt.py ---------------------------------------------------

STAND_IN = r'''
"""STAND-IN for a checkout's pretrain_gpt.py (mixexp test): prints Megatron core_r0.8.0 training_log lines."""
import json, os, sys
from datetime import datetime

argv = sys.argv[1:]
arg = lambda name: argv[argv.index(name) + 1]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if rank == 0:
    with open(os.environ["STAND_IN_RECORD"], "w") as f:
        json.dump({"argv": argv, "cwd": os.getcwd(), "world": world,
                   "env": {k: os.environ.get(k) for k in ("CUDA_DEVICE_MAX_CONNECTIONS", "HCCL_EXEC_TIMEOUT")}}, f)
    print(" > number of parameters on (tensor, pipeline) model parallel rank (0, 0): 123456", flush=True)
if os.environ.get("STAND_IN_FAIL") and rank == 0:
    raise AssertionError("seq-length should be a multiple of 2 * context-parallel-size if context-parallel-size > 1.")
iters, gbs, interval, lr = int(arg("--train-iters")), int(arg("--global-batch-size")), int(arg("--log-interval")), float(arg("--lr"))
for it in range(1, iters + 1):
    if it % interval == 0 and rank == world - 1:
        line = f" [{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}]"
        line += " iteration {:8d}/{:8d} |".format(it, iters)
        line += " consumed samples: {:12d} |".format(it * gbs)
        line += " elapsed time per iteration (ms): {:.1f} |".format(1000.0 + 250.0 * it)
        line += f" throughput per GPU (TFLOP/s/GPU): {0.5 * it:.1f} |"
        line += " learning rate: {:.6E} |".format(lr)
        line += " global batch size: {:5d} |".format(gbs)
        line += " lm loss: {:.6E} |".format(10.5 - 0.25 * it)
        line += " loss scale: {:.1f} |".format(1.0)
        line += " grad norm: {:.3f} |".format(2.5)
        line += " number of skipped iterations: {:3d} |".format(0)
        line += " number of nan iterations: {:3d} |".format(0)
        print(line, flush=True)
    if it == interval and rank == 0:
        print("[Rank 0] (after {} iterations) memory (MB) | allocated: 100.0 | max allocated: 512.0 | "
              "reserved: 600.0 | max reserved: 600.0".format(it), flush=True)
'''

OVERRIDES = ["engine=megatron_lm", "data=synthetic", "parallel=dp2", "train.iters=4", "train.log_interval=2",
             "train.global_batch_size=8", "train.warmup_steps=2"]


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "Megatron-LM"
    root.mkdir()
    (root / "pretrain_gpt.py").write_text(STAND_IN)
    monkeypatch.setenv("STAND_IN_RECORD", str(tmp_path / "record.json"))
    return root


def test_end_to_end_with_a_stand_in_script(checkout, tmp_path, capsys):
    cfg = compose(OVERRIDES + [f"engine.path={checkout}", "engine.extra_args=[--no-load-rng]"])
    layout = validate(cfg)
    run_dir = tmp_path / "run"
    summary = run_megatron_lm(cfg, layout, run_dir)

    record = json.loads((tmp_path / "record.json").read_text())
    expected = render(cfg) + io_args(cfg, None, save_dir=str(run_dir / "checkpoints")) + ["--no-load-rng"]
    assert record["argv"] == expected and record["world"] == 2
    assert record["cwd"] == str(checkout) and record["env"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert record["env"]["HCCL_EXEC_TIMEOUT"] == "120"
    assert "--mock-data" in record["argv"] and "--distributed-backend" in record["argv"]

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["step_time_s"] for r in rows] == [1.5, 2.0]
    assert [r["loss"] for r in rows] == [10.0, 9.5]
    assert [r["tokens_per_sec"] for r in rows] == [8 * 128 / 1.5, 8 * 128 / 2.0]
    assert [r["tflops_per_device"] for r in rows] == [1.0, 2.0]
    assert rows[1]["mfu"] == pytest.approx(2.0e12 / 1.37e11)
    # Rank 0's memory report and the last rank's iteration lines interleave in any order.
    assert rows[0]["memory_gb"] in (None, 0.5) and rows[1]["memory_gb"] in (None, 0.5)
    assert rows[0]["lr"] == 3e-4 and rows[0]["grad_norm"] == 2.5

    assert summary == json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and "error" not in summary
    assert summary["layout"] == {"tp": 1, "pp": 1, "ep": 1, "cp": 1, "dp": 2, "vpp": 1}
    assert summary["world_size"] == 2 and summary["params_per_rank_max"] == 123456
    assert summary["params_total"] > 0
    # Averages skip the warm-up steps (1 and 2): only step 4 counts.
    assert summary["step_time_s"] == 2.0 and summary["tokens_per_sec"] == 512.0
    assert summary["tokens_per_sec_per_device"] == 256.0 and summary["tflops_per_device"] == 2.0
    assert summary["peak_memory_gb"] == 0.5 and (summary["first_loss"], summary["final_loss"]) == (10.0, 9.5)

    log = (run_dir / LOG_NAME).read_text()
    assert "iteration        4/       4 |" in log and "memory (MB)" in log
    assert "iteration        4/       4 |" in capsys.readouterr().out  # teed to the console
    assert "pretrain_gpt.py" in (run_dir / COMMAND_NAME).read_text()


def test_a_failing_script_gives_a_failed_summary_with_its_error(checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    cfg = compose(OVERRIDES + [f"engine.path={checkout}"])
    summary = run_megatron_lm(cfg, validate(cfg), tmp_path / "run")
    assert summary["status"] == "failed"
    assert summary["error"] == ("AssertionError: seq-length should be a multiple of 2 * context-parallel-size "
                                "if context-parallel-size > 1.")
    assert summary["layout"]["dp"] == 2 and summary["tokens_per_sec"] is None
