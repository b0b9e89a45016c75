"""The command line answers bad input with exit code 2 and one line, before heavy imports."""

import json

import pytest

from conftest import run_train


@pytest.mark.parametrize("args, line", [
    (("parallel.tp=3",), "error: parallel.tp=3 does not divide model.num_attention_heads=8"),
    (("parallel.tpp=3",), "error: Could not override 'parallel.tpp'. (Key 'tpp' not in 'ParallelConfig')"),
    (("parallel.tp=abc",),
     "error: Error merging override parallel.tp=abc (Value 'abc' of type 'str' could not be converted to Integer)"),
    (("model=mixtral_9x9b",), "error: In 'train': Could not find 'model/mixtral_9x9b' "
     "(available: mixtral_8x22b, mixtral_8x7b, mixtral_proxy_gpu, mixtral_tiny)"),
])
def test_bad_configuration_exits_2_with_one_line(args, line):
    result = run_train(*args, "hydra.run.dir=/tmp/mixexp_cli_test", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0].startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_layout_error_writes_a_failed_summary(tmp_path):
    result = run_train("parallel.pp=3", f"hydra.run.dir={tmp_path}", timeout=60)
    assert result.returncode == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "parallel.pp*parallel.vpp=3 does not divide model.num_layers=4"


def test_cfg_job_prints_the_composed_config():
    result = run_train("--cfg", "job", "parallel=tp2", timeout=60)
    assert result.returncode == 0
    assert "tp: 2" in result.stdout and "name: mixtral_tiny" in result.stdout
