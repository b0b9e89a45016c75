"""Worker side: megatron-core datasets in, per-micro-batch tensors out.

Each step takes `global_batch_size` consecutive samples. Data-parallel rank d
takes its contiguous share and cuts it into micro-batches; context-parallel
ranks keep their two load-balanced sequence chunks. Every layout therefore
sees the same samples each step, which is what makes losses comparable.
"""

from __future__ import annotations

import numpy as np
import torch

from mixexp.ring_attention import local_chunk_indices


class _TokenizerInfo:
    """What megatron's GPTDataset asks of a tokenizer."""

    def __init__(self, name: str, vocab_size: int, eod: int):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = -1  # no padding token: Mixtral has none, and eod must not be masked as padding
        # Part of the key of megatron's cached sample indices.
        self.unique_identifiers = {"class": "mixexp", "tokenizer": name, "vocab_size": vocab_size, "eod": eod}


class SyntheticDataset(torch.utils.data.Dataset):
    """Uniformly random token ids, the same for a given (seed, index) on every rank."""

    def __init__(self, num_samples: int, seq_length: int, vocab_size: int, seed: int):
        self.num_samples, self.seq_length, self.vocab_size, self.seed = num_samples, seq_length, vocab_size, seed

    def __len__(self):
        return self.num_samples

    def __getitem__(self, idx):
        rng = np.random.default_rng((self.seed, idx))
        text = torch.from_numpy(rng.integers(0, self.vocab_size, self.seq_length + 1, dtype=np.int64))
        return {"tokens": text[:-1], "labels": text[1:], "loss_mask": torch.ones(self.seq_length),
                "position_ids": torch.arange(self.seq_length)}


def build_dataset(cfg, prefix: str | None, num_samples: int):
    t, d = cfg.train, cfg.data
    if d.kind == "synthetic":
        return SyntheticDataset(num_samples, t.seq_length, cfg.model.vocab_size, t.seed)
    if d.kind == "instruction":
        from mixexp.data.instruction_dataset import InstructionDataset
        return InstructionDataset(prefix, t.seq_length, num_samples, t.seed)
    return _gpt_dataset(cfg, prefix, num_samples)


def _gpt_dataset(cfg, prefix: str, num_samples: int):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from mixexp.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_path)
    config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.train.seq_length,
        blend=([prefix], None),
        split=cfg.data.split,
        tokenizer=_TokenizerInfo(cfg.data.tokenizer, tokenizer.vocab_size, tokenizer.eod_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=str(prefix) + "_cache",
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()
    return train


class MicroBatches:
    """Yields this rank's micro-batches for one step after another."""

    def __init__(self, dataset, cfg, layout, dp_rank: int, cp_rank: int, device=None):
        t = cfg.train
        self.device = device
        self.dataset, self.gbs, self.mbs = dataset, t.global_batch_size, t.micro_batch_size
        self.per_dp_rank = self.gbs // layout.dp
        self.dp_rank, self.cp_rank, self.cp = dp_rank, cp_rank, layout.cp
        self.cp_index = local_chunk_indices(t.seq_length, cp_rank, layout.cp) if layout.cp > 1 else None

    @property
    def num_microbatches(self) -> int:
        return self.per_dp_rank // self.mbs

    def step(self, step: int):
        """An iterator over the micro-batches of one step (0-based)."""
        first = step * self.gbs + self.dp_rank * self.per_dp_rank
        for start in range(first, first + self.per_dp_rank, self.mbs):
            samples = [self.dataset[i] for i in range(start, start + self.mbs)]
            batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples])
                     for k in ("tokens", "labels", "loss_mask", "position_ids")}
            if self.cp_index is not None:
                batch = {k: v[:, self.cp_index] for k, v in batch.items()}
            if self.device is not None and self.device.type != "cpu":
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            yield batch
