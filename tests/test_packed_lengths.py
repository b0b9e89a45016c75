"""Instruction data longer than train.seq_length: packed rows are refused with both numbers, longer samples
are named. Files written by preprocess.py as a user runs it."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO, compose, run_train
from mixexp.data.prepare import check_sample_lengths


def preprocess(out, *args):
    proc = subprocess.run([sys.executable, "preprocess.py", "input=data/sample/alpaca_sample.jsonl",
                           f"output_prefix={out}", "handler=alpaca", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_packed_rows_longer_than_the_sequence_are_refused(tmp_path):
    preprocess(tmp_path / "alpaca", "pack=true", "seq_length=512")
    prefix = tmp_path / "alpaca_packed"
    result = run_train("data=alpaca", f"data.prefix={prefix}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: data.prefix={prefix} is packed in rows of 512 tokens but "
                                     f"train.seq_length=128 would cut every row to 129: train with "
                                     f"train.seq_length=512 (or preprocess again with seq_length=128)")
    assert not (tmp_path / "run" / "worker_config.yaml").exists()
    assert check_sample_lengths(compose("data=alpaca", f"data.prefix={prefix}").data, str(prefix), 512) is None


def test_longer_unpacked_samples_are_named(tmp_path):
    import struct

    preprocess(tmp_path / "alpaca")
    prefix = str(tmp_path / "alpaca_packed")
    # The lengths by the .idx format itself: 9-byte magic, version, dtype code, then counts and int32 lengths.
    raw = Path(f"{prefix}_input_ids_document.idx").read_bytes()
    (count,) = struct.unpack("<Q", raw[18:26])
    lengths = struct.unpack(f"<{count}i", raw[34:34 + 4 * count])
    lengths = np.array(lengths)
    longer = int((lengths > 33).sum())
    assert 0 < longer < len(lengths)
    note = check_sample_lengths(compose("data=alpaca", f"data.prefix={prefix}").data, prefix, 32)
    assert note == (f"[data] {longer:,} of {len(lengths):,} samples are longer than train.seq_length=32 "
                    f"(up to {int(lengths.max())} tokens) and are truncated to 33")
