"""The indexed datasets one preprocessing run writes, and their names.

  pretrain  one dataset per key: ``{PREFIX}_{key}_document``
  alpaca    ``{PREFIX}_packed_{input_ids,attention_mask,labels}_document``, one
            document per sample, or per ``seq_length`` row when packing

Everything is written under temporary names until :meth:`OutputDatasets.commit`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mixexp.data import handlers as H
from mixexp.data import indexed


def output_prefixes(output_prefix: str, handler: str = "pretrain", json_keys: Sequence[str] = ("text",)) -> dict[str, str]:
    """``{key: prefix}`` of the datasets :func:`~mixexp.data.preprocess.preprocess` writes."""
    if handler == "pretrain":
        return {k: f"{output_prefix}_{k}_document" for k in json_keys}
    return {k: f"{output_prefix}_packed_{k}_document" for k in H.ALPACA_OUTPUT_KEYS}


class OutputDatasets:
    """Open writers for ``prefixes``; :meth:`write` takes each chunk's tokens in input order."""

    def __init__(self, spec: H.HandlerSpec, prefixes: dict[str, str], dtypes: dict[str, np.dtype],
                 packer: H.SequencePacker | None) -> None:
        self.spec = spec
        self.packer = packer
        self.writers: dict[str, indexed.IndexedWriter] = {}
        try:
            for key, prefix in prefixes.items():
                self.writers[key] = indexed.IndexedWriter(prefix, dtypes[key])
        except BaseException:
            self.discard()
            raise

    def write(self, tok: H.Tokenized) -> int:
        """Append one chunk's documents; returns how many (samples, when packing)."""
        if self.spec.name == "pretrain":
            for key, (tokens, lengths) in tok.documents.items():
                self.writers[key].add_documents(tokens, lengths)
            return tok.documents[self.spec.json_keys[0]][1].size
        if self.packer is None:
            mask = np.ones(tok.input_ids.size, dtype=np.int32)
            self._write_instruction(tok.input_ids, mask, tok.labels, tok.lengths)
        else:
            ends = np.cumsum(tok.lengths)
            starts = ends - tok.lengths
            for s, e in zip(starts.tolist(), ends.tolist()):
                self._write_packs(self.packer.add(tok.input_ids[s:e], tok.labels[s:e]))
        return tok.lengths.size

    def finish(self) -> None:
        """Write the last, partly filled pack."""
        if self.packer is not None:
            self._write_packs(self.packer.flush())

    @property
    def tokens_written(self) -> int:
        return next(iter(self.writers.values())).num_tokens

    def commit(self) -> None:
        indexed.commit(list(self.writers.values()))

    def discard(self) -> None:
        for w in self.writers.values():
            w.discard()

    def _write_packs(self, packs: list) -> None:
        for ids, mask, labels in packs:
            self._write_instruction(ids, mask, labels, np.array([ids.size], dtype=np.int64))

    def _write_instruction(self, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> None:
        self.writers["input_ids"].add_documents(ids, lengths)
        self.writers["attention_mask"].add_documents(mask, lengths)
        self.writers["labels"].add_documents(labels, lengths)
