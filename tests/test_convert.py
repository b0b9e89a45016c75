"""Hugging Face Mixtral <-> mixexp checkpoints, with a tiny MixtralForCausalLM made by transformers.

The tiny model has mixtral_tiny's shape (random weights, fp32, saved with save_pretrained, which
writes the per-expert w1/w2/w3 layout of the published Mixtral checkpoints).
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO, read_jsonl, run_train
from mixexp import convert

transformers = pytest.importorskip("transformers")


def tensors(directory) -> dict:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def run_convert(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mixexp.convert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    config = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).float().eval()
    path = tmp_path_factory.mktemp("hf") / "tiny_mixtral"
    model.save_pretrained(path)
    save_tokenizer(path)
    return model, path


def save_tokenizer(path):
    """A small real tokenizer (tokenizer.json + tokenizer_config.json), as an HF model directory holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "hello": 4, "experts": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(path)


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcore") / "tiny"
    result = run_convert("hf_to_mcore", f"hf={hf_model[1]}", f"out={out}", "model=mixtral_tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[mixexp] converting {3 + 4 * (7 + 8 * 3)} tensors (" in result.stderr
    return out


def test_the_published_layout_is_what_we_convert(hf_model):
    names = set(tensors(hf_model[1]))
    assert "model.layers.3.block_sparse_moe.experts.7.w2.weight" in names and "lm_head.weight" in names
    assert len(names) == 3 + 4 * (7 + 8 * 3)


def test_logits_match_transformers(hf_model, converted, tmp_path):
    model, _ = hf_model
    tokens = torch.randint(0, 32000, (2, 64), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, tmp_path / "tokens.pt")
    result = subprocess.run([sys.executable, str(REPO / "tests" / "mcore_logits.py"), str(converted),
                             str(tmp_path / "tokens.pt"), str(tmp_path / "ours.pt")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        reference = model(tokens).logits
    ours = torch.load(tmp_path / "ours.pt")
    assert ours.shape == reference.shape == (2, 64, 32000)
    assert reference.abs().max() > 0.5  # not all near zero, so the comparison means something
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def test_hf_to_mcore_to_hf_is_bitwise_identical(hf_model, converted, tmp_path):
    result = run_convert("mcore_to_hf", f"ckpt={converted}", f"out={tmp_path / 'back'}")
    assert result.returncode == 0, result.stderr[-3000:]
    total = sum(p.numel() for p in hf_model[0].parameters())
    progress = [line for line in result.stderr.splitlines() if f"of {total:,} parameters" in line]
    assert len(progress) == 5 and progress[0].startswith("[mixexp] model-00001-of-00005.safetensors: ")
    assert "100.0% of" in progress[-1] and "ETA 0 s" in progress[-1]
    original, back = tensors(hf_model[1]), tensors(tmp_path / "back")
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == \
        json.loads((hf_model[1] / "config.json").read_text())
    back_model = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "back")  # transformers reads it
    assert torch.equal(back_model.lm_head.weight, hf_model[0].lm_head.weight)
    # The tokenizer comes along from the directory hf_to_mcore read.
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (hf_model[1] / name).read_bytes(), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer("hello experts nope")["input_ids"] == [4, 5, 0]


def test_a_trained_checkpoint_exports_with_a_named_tokenizer(hf_model, converted, tmp_path):
    """Fine-tune 2 steps from converted weights, export iter_0000002 to HF: the exported model has learned."""
    run = tmp_path / "run"
    result = run_train("data=alpaca", f"ckpt.load={converted}", "ckpt.finetune=true", "train.iters=2",
                       "ckpt.save_interval=2", "optim.lr=1e-3", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = run / "checkpoints" / "iter_0000002"
    result = run_convert("mcore_to_hf", f"ckpt={trained}", f"out={tmp_path / 'plain'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "plain" / "tokenizer.json").exists()  # a training checkpoint names no HF source
    assert result.stderr.strip().splitlines()[-1] == (f"[mixexp] {tmp_path / 'plain'} has no tokenizer files: add "
                                                      f"tokenizer=HF_DIR to copy them from a Hugging Face model "
                                                      f"directory")

    result = run_convert("mcore_to_hf", f"ckpt={trained}", f"out={tmp_path / 'hf'}", f"tokenizer={hf_model[1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("hello")["input_ids"] == [4]
    exported = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not torch.equal(exported.lm_head.weight, hf_model[0].lm_head.weight)  # trained, not the original

    # On the first global batch the run trained on, the exported model's loss is below the original's.
    assert first_batch_loss(exported, run) < first_batch_loss(hf_model[0], run) - 0.05


def test_missing_inputs_are_named(tmp_path):
    result = run_convert("hf_to_mcore", f"hf={tmp_path / 'nowhere'}", f"out={tmp_path / 'out'}", timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: hf={tmp_path / 'nowhere'} has no config.json: point hf= at a Hugging Face Mixtral model directory "
        f"(config.json and *.safetensors)")
    result = run_convert("mcore_to_hf", f"ckpt={tmp_path}", f"out={tmp_path / 'out'}", timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: ckpt={tmp_path} is not a checkpoint (no common.pt): point ckpt= at an iter_XXXXXXX directory or "
        f"at what hf_to_mcore wrote")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_dir_without_tokenizer_files_is_refused(converted, tmp_path):
    result = run_convert("mcore_to_hf", f"ckpt={converted}", f"out={tmp_path / 'out'}", f"tokenizer={tmp_path}",
                         timeout=60)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: tokenizer={tmp_path} holds none of tokenizer.json, tokenizer.model, tokenizer_config.json, "
        f"special_tokens_map.json, generation_config.json: point it at the Hugging Face model directory the "
        f"weights came from")


def edited_copy(src, dst, drop=(), add=None):
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        content = {k: v for k, v in load_file(f).items() if k not in drop}
        save_file({**content, **(add or {})}, f, metadata={"format": "pt"})
    return dst


def test_a_missing_expert_tensor_is_named(hf_model, tmp_path):
    name = "model.layers.2.block_sparse_moe.experts.5.w3.weight"
    broken = edited_copy(hf_model[1], tmp_path / "broken", drop=[name])
    with pytest.raises(convert.ConvertError, match=f"1 tensor\\(s\\) missing, e.g. {name.replace('.', '[.]')}$"):
        convert.hf_to_mcore(broken, tmp_path / "out")
    result = run_convert("hf_to_mcore", f"hf={broken}", f"out={tmp_path / 'out'}", timeout=60)
    assert result.returncode == 2 and name in result.stderr.strip().splitlines()[-1]


def test_an_unused_tensor_is_named(hf_model, tmp_path):
    extra = "model.layers.1.block_sparse_moe.experts.8.w1.weight"  # a 9th expert the config does not have
    broken = edited_copy(hf_model[1], tmp_path / "extra", add={extra: torch.zeros(256, 128)})
    with pytest.raises(convert.ConvertError, match=f"unused by a Mixtral of this config, e.g. {extra}"):
        convert.hf_to_mcore(broken, tmp_path / "out")


def test_a_config_that_differs_from_model_is_refused(hf_model, tmp_path):
    with pytest.raises(convert.ConvertError, match="differs from model=mixtral_8x7b .*num_layers: 32 vs 4"):
        convert.hf_to_mcore(hf_model[1], tmp_path / "out", model="mixtral_8x7b")


def test_converted_weights_need_finetune(converted, tmp_path):
    result = run_train("data=synthetic", f"ckpt.load={converted}", f"hydra.run.dir={tmp_path}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: ckpt.load={converted} holds model weights only (converted): start from it with ckpt.finetune=true")


def test_finetune_on_alpaca_starts_at_the_hf_loss_and_falls(hf_model, converted, tmp_path):
    result = run_train("data=alpaca", f"ckpt.load={converted}", "ckpt.finetune=true", "train.iters=4",
                       "optim.lr=1e-3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[mixexp] loaded weights of {converted}" in result.stdout
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    # transformers' loss on the same first global batch (8 samples, prompt tokens masked)
    assert rows[0]["loss"] == pytest.approx(first_batch_loss(hf_model[0], tmp_path), abs=1e-4)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1


def first_batch_loss(model, run_dir) -> float:
    """transformers' masked LM loss on the first global batch of the alpaca run in `run_dir`."""
    from omegaconf import OmegaConf

    from mixexp.data.instruction_dataset import InstructionDataset

    worker_cfg = OmegaConf.load(run_dir / "worker_config.yaml")
    t = worker_cfg.train
    dataset = InstructionDataset(worker_cfg.data_prefix, t.seq_length, t.iters * t.global_batch_size, t.seed)
    batch = [dataset[i] for i in range(t.global_batch_size)]
    tokens, labels, mask = (torch.stack([torch.as_tensor(s[k]) for s in batch]) for k in ("tokens", "labels", "loss_mask"))
    assert mask.sum() > 100  # enough answer tokens for the loss to mean something
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(tokens).logits.transpose(1, 2), labels, reduction="none")
    return ((losses * mask).sum() / mask.sum()).item()
