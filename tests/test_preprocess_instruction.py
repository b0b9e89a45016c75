"""The training-side reader of alpaca outputs, and the bundled sample data."""

import json
import os

import numpy as np
import pytest
import torch

from mixexp.data.instruction_dataset import InstructionDataset
from mixexp.data.preprocess import preprocess
from mixexp.data.tokenizers import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    rows = [
        {"instruction": "What is 2+2?", "input": "", "output": "4"},
        {"instruction": "Reverse the word.", "input": "apple", "output": "elppa"},
        {"instruction": "Write a long answer.", "input": "", "output": "word " * 25},
    ]
    with open(d / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    preprocess(str(d / "a.jsonl"), str(d / "sft"), handler="alpaca", show_progress=False)
    preprocess(str(d / "a.jsonl"), str(d / "packed"), handler="alpaca", pack=True, seq_length=48,
               show_progress=False)
    return d


def _find(ds, first_tokens):
    for i in range(ds.num_documents):
        item = ds[i]
        if item["tokens"][: len(first_tokens)].tolist() == first_tokens:
            return item
    raise AssertionError("sample not found")


def test_item_layout_matches_gptdataset(sft, tok):
    ds = InstructionDataset(str(sft / "sft"), seq_length=32, num_samples=7, seed=5)
    assert len(ds) == 7 and ds.num_documents == 3
    prompt = [1] + tok.encode("[INST] What is 2+2? [/INST]")
    answer = tok.encode("4") + [2]
    item = _find(ds, prompt)
    assert set(item) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert [item[k].dtype for k in ("tokens", "labels", "loss_mask", "position_ids")] == [
        torch.int64, torch.int64, torch.float32, torch.int64,
    ]
    assert all(item[k].shape == (32,) for k in item)
    n = len(prompt) + len(answer)
    assert item["tokens"].tolist() == prompt + answer + [0] * (32 - n)
    # position t predicts token t+1; only the answer and its EOS are learned
    expected_labels = [0] * (len(prompt) - 1) + answer + [0] * (32 - n + 1)
    assert item["labels"].tolist() == expected_labels
    assert item["loss_mask"].tolist() == [0.0] * (len(prompt) - 1) + [1.0] * len(answer) + [0.0] * (32 - n + 1)
    assert item["position_ids"].tolist() == list(range(32))


def test_truncation_and_wrap_around_are_deterministic(sft):
    ds = InstructionDataset(str(sft / "sft_packed_input_ids_document"), seq_length=16, num_samples=10, seed=3)
    items = [ds[i] for i in range(10)]
    firsts = [it["tokens"][:6].tolist() for it in items]
    assert sorted(map(tuple, firsts[:3])) == sorted(map(tuple, firsts[3:6]))  # each epoch is a permutation
    again = InstructionDataset(str(sft / "sft_packed"), seq_length=16, num_samples=10, seed=3)
    for i in (0, 4, 9):
        for k in items[i]:
            assert torch.equal(again[i][k], items[i][k])
    other = InstructionDataset(str(sft / "sft"), seq_length=16, num_samples=10, seed=4)
    assert [other[i]["tokens"][:6].tolist() for i in range(10)] != firsts
    long_item = next(it for it in items if it["loss_mask"].sum() == 16 - it["loss_mask"].tolist().index(1.0))
    assert long_item["tokens"].shape == (16,)
    with pytest.raises(IndexError):
        ds[10]


def test_packed_rows_mask_prompts_and_boundaries(sft, tok):
    ds = InstructionDataset(str(sft / "packed"), seq_length=48, num_samples=4, seed=0)
    assert ds.num_documents == 2  # the first two samples share a pack, the long one has its own
    item = _find(ds, [1] + tok.encode("[INST] What is 2+2? [/INST]"))
    toks = item["tokens"].tolist()
    second = toks.index(1, 1)  # BOS of the second sample in the pack
    assert item["loss_mask"][second - 1] == 0  # no loss on predicting the next sample's BOS
    assert item["labels"][second - 2].item() == 2  # the first answer's EOS is learned
    assert item["loss_mask"].sum().item() == len(tok.encode("4")) + 1 + len(tok.encode("elppa")) + 1


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instruction dataset not found: .*nope_packed_input_ids_document"):
        InstructionDataset(str(tmp_path / "nope"), seq_length=8, num_samples=1)


def test_bundled_sample_data(tmp_path, tok):
    text_path = os.path.join(SAMPLE, "sample_text.jsonl")
    alpaca_path = os.path.join(SAMPLE, "alpaca_sample.jsonl")
    assert os.path.getsize(text_path) + os.path.getsize(alpaca_path) < 1_000_000
    texts = [json.loads(line) for line in open(text_path, encoding="utf-8")]
    alpaca = [json.loads(line) for line in open(alpaca_path, encoding="utf-8")]
    assert 300 <= len(texts) <= 1500 and all(set(r) == {"text"} and r["text"] for r in texts)
    assert 200 <= len(alpaca) <= 1000
    assert all(set(r) == {"instruction", "input", "output", "text"} for r in alpaca)
    assert all(r["text"].endswith("### Response:\n" + r["output"]) for r in alpaca)
    report = preprocess(text_path, str(tmp_path / "sample"), workers=2, show_progress=False)
    assert report["documents"] == len(texts) and report["skipped"] == 0 and report["empty"] == 0
    assert report["tokens"] > 80_000
    rep = preprocess(alpaca_path, str(tmp_path / "alpaca"), handler="alpaca", show_progress=False)
    assert rep["documents"] == len(alpaca)
    pre = preprocess(alpaca_path, str(tmp_path / "seed"), show_progress=False)  # the seed's text column
    assert pre["outputs"] == {"text": str(tmp_path / "seed_text_document")}
    ds = InstructionDataset(str(tmp_path / "alpaca"), seq_length=128, num_samples=1000, seed=1)
    masks = np.stack([ds[i]["loss_mask"].numpy() for i in range(0, 1000, 97)])
    assert (masks.sum(axis=1) > 0).all()
