"""python preprocess.py: Hydra config groups, report, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

from hydra import compose, initialize_config_dir

from mixexp.data.preprocess import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF = os.path.join(ROOT, "conf")


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("preprocess", overrides=list(overrides))


def _cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "preprocess.py"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_config_groups_compose():
    cfg = _compose("input=x.jsonl", "output_prefix=out/x")
    assert cfg.handler.name == "pretrain" and list(cfg.handler.json_keys) == ["text"]
    assert cfg.tokenizer.kind == "mixtral" and cfg.tokenizer.path is None
    assert (cfg.workers, cfg.add_bos, cfg.append_eod, cfg.skip_bad_rows) == (1, True, True, False)
    cfg = _compose("preprocess_handler=alpaca", "preprocess_tokenizer=hf", "tokenizer.path=t.json",
                   "handler.columns={output: answer}", "pack=true", "seq_length=64")
    assert cfg.handler.name == "alpaca" and cfg.handler.prompt_template == "mixtral"
    assert dict(cfg.handler.columns) == {"output": "answer"}
    assert cfg.tokenizer.kind == "hf" and cfg.tokenizer.path == "t.json"
    assert _compose("preprocess_tokenizer=sentencepiece").tokenizer.kind == "sentencepiece"


def test_main_from_composed_config(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"question": "What is 2+2?", "answer": "4"}) + "\n")
    cfg = _compose(f"input={src}", f"output_prefix={tmp_path / 'sft'}", "preprocess_handler=alpaca",
                   "handler.columns={instruction: question, output: answer}", "show_progress=false")
    assert main(cfg) == 0
    out = capsys.readouterr().out
    assert "rows 1  documents 1" in out
    assert f"labels: {tmp_path / 'sft'}_packed_labels_document.bin/.idx (int32)" in out
    cfg = _compose(f"input={src}", f"output_prefix={tmp_path / 'x'}", "show_progress=false")
    assert main(cfg) == 2
    err = capsys.readouterr().err
    assert err == f"preprocess: error: column 'text' not found in {src}; columns: 'question', 'answer'\n"
    # shorthands: handler=NAME, tokenizer=KIND or a model path
    from mixexp.data.tokenizers import mixtral_model_path

    cfg = _compose(f"input={src}", f"output_prefix={tmp_path / 'short'}", "handler=alpaca",
                   f"tokenizer={mixtral_model_path()}", "show_progress=false")
    assert cfg.handler == "alpaca" and cfg.tokenizer == mixtral_model_path()
    assert main(cfg) == 2  # alpaca without a column mapping: instruction is missing
    assert capsys.readouterr().err == (
        f"preprocess: error: column 'instruction' not found in {src}; columns: 'question', 'answer'\n"
    )
    assert main(_compose()) == 2
    assert capsys.readouterr().err == (
        "preprocess: error: input is required: python preprocess.py input=PATH output_prefix=PREFIX\n"
    )


def test_command_line(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": f"Line {i} of the corpus."}) + "\n" for i in range(50)))
    ok = _cli(f"input={src}", f"output_prefix={tmp_path / 'c'}", "workers=2")
    assert ok.returncode == 0, ok.stderr
    assert "rows 50  documents 50" in ok.stdout and "rows/s" in ok.stdout
    assert "tokens/s" in ok.stderr  # the progress bar
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("c_")) == [
        "c_text_document.bin", "c_text_document.idx",
    ]
    assert not os.path.exists(os.path.join(ROOT, "outputs", "preprocess"))
    missing = tmp_path / "missing.parquet"
    bad = _cli(f"input={missing}", f"output_prefix={tmp_path / 'd'}")
    assert bad.returncode == 2
    assert bad.stderr == f"preprocess: error: input not found: {missing}\n"
    assert bad.stdout == ""


def test_a_bad_override_is_one_line_with_exit_code_2(tmp_path):
    bad = _cli("input=x.jsonl", f"output_prefix={tmp_path / 'x'}", "text_key=body")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "error: Could not override 'text_key'. (Key 'text_key' is not in struct)\n"
