"""The real Mixtral tokenizer, any SentencePiece model, and HF tokenizer.json files."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mixexp.data.tokenizers import TokenizerError, load_tokenizer, mixtral_model_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mixtral():
    return load_tokenizer()


def test_mixtral_ids_are_the_real_ones(mixtral):
    assert mixtral.kind == "mixtral"
    assert mixtral.vocab_size == 32000
    assert (mixtral.bos_id, mixtral.eos_id, mixtral.eod_id, mixtral.pad_id) == (1, 2, 2, 0)
    assert mixtral.encode("Hello world") == [22557, 1526]
    assert mixtral.encode("[INST] What is 2+2? [/INST]") == [
        733, 16289, 28793, 1824, 349, 28705, 28750, 28806, 28750, 28804, 733, 28748, 16289, 28793,
    ]
    assert mixtral.encode("") == []
    assert mixtral.decode([22557, 1526]) == "Hello world"
    assert mixtral.decode([1, 22557, 1526, 2]) == "Hello world"


def test_mixtral_model_comes_from_mistral_common():
    path = mixtral_model_path()
    assert path.replace(os.sep, "/").endswith("mistral_common/data/tokenizer.model.v1")
    assert os.path.getsize(path) > 400_000


def test_encode_batch_matches_encode(mixtral):
    texts = ["Hello world", "", "naïve café — 東京", "x" * 1000]
    batch = mixtral.encode_batch(texts)
    assert [b.dtype for b in batch] == [np.int32] * 4
    assert [b.tolist() for b in batch] == [mixtral.encode(t) for t in texts]


def test_sentencepiece_kind_reads_any_model_file(mixtral):
    sp = load_tokenizer("sentencepiece", mixtral_model_path())
    assert sp.kind == "sentencepiece"
    assert sp.encode("Hello world") == [22557, 1526]
    assert (sp.bos_id, sp.eos_id, sp.pad_id, sp.vocab_size) == (1, 2, 0, 32000)


def test_tokenizer_pickles_by_reloading(mixtral):
    clone = pickle.loads(pickle.dumps(mixtral))
    assert clone.encode("Hello world") == [22557, 1526]
    assert len(pickle.dumps(mixtral)) < 1000  # the spec travels, not the model


def _write_hf_tokenizer(directory, config=None):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "hello": 4, "world": 5, "[BOS]": 6, "[EOS]": 7}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    if config is not None:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    return path


def test_hf_tokenizer_json(tmp_path):
    path = _write_hf_tokenizer(str(tmp_path))
    tok = load_tokenizer("hf", path)
    assert tok.encode("hello world") == [4, 5]
    assert tok.encode("hello mars") == [4, 0]
    assert [a.tolist() for a in tok.encode_batch(["world hello", ""])] == [[5, 4], []]
    assert (tok.bos_id, tok.eos_id, tok.eod_id, tok.pad_id, tok.vocab_size) == (1, 2, 2, 3, 8)
    assert tok.decode([4, 5]) == "hello world"
    # a directory works too
    assert load_tokenizer("hf", str(tmp_path)).encode("world") == [5]


def test_hf_special_tokens_from_tokenizer_config(tmp_path):
    _write_hf_tokenizer(str(tmp_path), {"bos_token": {"content": "[BOS]"}, "eos_token": "[EOS]"})
    tok = load_tokenizer("hf", str(tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (6, 7, 3)


def test_errors_are_one_line(tmp_path):
    cases = [
        (("bpe", None), "unknown tokenizer kind 'bpe' (expected one of: mixtral, sentencepiece, hf)"),
        (("sentencepiece", None), "tokenizer kind 'sentencepiece' needs a path (tokenizer.path=...)"),
        (("sentencepiece", str(tmp_path / "no.model")), f"tokenizer file not found: {tmp_path / 'no.model'}"),
        (("hf", str(tmp_path / "none.json")), f"tokenizer file not found: {tmp_path / 'none.json'}"),
        (("hf", str(tmp_path)), f"tokenizer file not found: {tmp_path / 'tokenizer.json'}"),
    ]
    for args, message in cases:
        with pytest.raises(TokenizerError) as info:
            load_tokenizer(*args)
        assert str(info.value) == message
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=r"^cannot load SentencePiece model .*bad\.model: "):
        load_tokenizer("sentencepiece", str(bad))


def test_import_is_cheap():
    code = (
        "import sys, mixexp.data.tokenizers, mixexp.data.preprocess, mixexp.data.handlers;"
        "heavy = [m for m in ('torch', 'megatron', 'sentencepiece', 'tokenizers', 'pyarrow') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
