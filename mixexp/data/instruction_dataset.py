"""Training-side reader of the instruction (alpaca) datasets that preprocess writes.

    InstructionDataset(prefix, seq_length, num_samples, seed, *, pad_id=0)

``prefix`` is the ``output_prefix`` given to preprocess (``{prefix}_packed_
{input_ids,attention_mask,labels}_document`` are read with megatron-core's
``IndexedDataset``); ``{prefix}_packed`` (MindSpeed-LLM's data path) and the full
``{prefix}_packed_input_ids_document`` work too.

Item ``i`` is a dict with the keys megatron-core's ``GPTDataset`` returns:

``tokens``       int64 [seq_length]  the sample's ids (one sample, or one pack)
``labels``       int64 [seq_length]  next-token targets: ``labels[t]`` is the
                 stored label of position ``t + 1`` (labels on disk are unshifted,
                 MindSpeed-LLM style); 0 where that label is -100 or past the end
``loss_mask``    float32 [seq_length] 1 where the target is a response token,
                 0 on the prompt, on padding and across pack boundaries
``position_ids`` int64 [seq_length]  0 .. seq_length-1, as GPTDataset

Samples longer than ``seq_length + 1`` are truncated; shorter ones are padded
with ``pad_id``. The order is a seeded shuffle of all samples, reshuffled every
epoch, so ``num_samples`` may exceed the number of samples on disk; item ``i``
depends only on ``(prefix, seq_length, seed, i)``.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mixexp.data.handlers import IGNORE_INDEX
from mixexp.data.outputs import output_prefixes

_SUFFIX = "_packed_input_ids_document"


def instruction_prefixes(prefix: str) -> dict[str, str]:
    """The three dataset prefixes, from ``PREFIX``, ``PREFIX_packed`` or ``PREFIX_packed_input_ids_document``."""
    prefix = os.fspath(prefix)
    if prefix.endswith(_SUFFIX):
        prefix = prefix[: -len(_SUFFIX)]
    elif (
        prefix.endswith("_packed")
        and not os.path.exists(f"{prefix}{_SUFFIX}.idx")
        and os.path.exists(f"{prefix}_input_ids_document.idx")
    ):
        prefix = prefix[: -len("_packed")]
    return output_prefixes(prefix, "alpaca")


class InstructionDataset(torch.utils.data.Dataset):
    def __init__(self, prefix: str, seq_length: int, num_samples: int, seed: int = 1234, *, pad_id: int = 0) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        paths = instruction_prefixes(prefix)
        missing = [p for p in paths.values() if not IndexedDataset.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"instruction dataset not found: {missing[0]}.bin/.idx (run preprocess.py "
                "with preprocess_handler=alpaca)"
            )
        if seq_length < 1:
            raise ValueError(f"seq_length must be positive, got {seq_length}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        self.prefix = paths["input_ids"][: -len(_SUFFIX)]
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.pad_id = int(pad_id)
        self.input_ids = IndexedDataset(paths["input_ids"])
        self.labels = IndexedDataset(paths["labels"])
        n = len(self.input_ids)
        if n == 0:
            raise ValueError(f"instruction dataset {paths['input_ids']} is empty")
        if len(self.labels) != n or not np.array_equal(
            self.input_ids.sequence_lengths, self.labels.sequence_lengths
        ):
            raise ValueError(f"input_ids and labels of {self.prefix} do not match")
        self.num_documents = n
        self._epoch_orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _document(self, idx: int) -> int:
        epoch, pos = divmod(idx, self.num_documents)
        order = self._epoch_orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_documents)
            if len(self._epoch_orders) > 4:
                self._epoch_orders.clear()
            self._epoch_orders[epoch] = order
        return int(order[pos])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if idx < 0:
            idx += self.num_samples
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} out of range for {self.num_samples} samples")
        doc = self._document(idx)
        n = min(int(self.input_ids.sequence_lengths[doc]), self.seq_length + 1)
        ids = np.asarray(self.input_ids.get(doc, 0, n), dtype=np.int64)
        stored = np.asarray(self.labels.get(doc, 0, n), dtype=np.int64)
        seq = self.seq_length
        tokens = np.full(seq, self.pad_id, dtype=np.int64)
        labels = np.zeros(seq, dtype=np.int64)
        loss_mask = np.zeros(seq, dtype=np.float32)
        used = min(n, seq)
        tokens[:used] = ids[:used]
        targets = stored[1:n]  # target of position t is the label stored at t + 1
        valid = targets != IGNORE_INDEX
        labels[: targets.size] = np.where(valid, targets, 0)
        loss_mask[: targets.size] = valid
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.arange(seq, dtype=torch.int64),
        }
