"""Make sure a data config's Megatron files exist before workers start (runs in the launcher).

Raw inputs named by `data.raw_path` are preprocessed once with the configured
tokenizer and cached under `data.cache_dir`, keyed by the input's content and
the tokenizer, so every later run (and every rank) reads the same files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mixexp.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fingerprint(path: Path, *parts: str) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _raw_path(data_cfg) -> Path:
    raw = Path(data_cfg.raw_path)
    raw = raw if raw.is_absolute() else REPO_ROOT / raw
    if not raw.exists():
        raise ConfigError(f"data.raw_path={data_cfg.raw_path} does not exist; point it at a parquet/jsonl/json/csv/txt file "
                          f"or set data.prefix to files written by preprocess.py")
    return raw


def _check_prefix(data_cfg) -> None:
    """A missing, mismatched or truncated .bin/.idx is answered now, not by a rank after start-up."""
    if data_cfg.kind != "indexed":  # instruction prefixes name three datasets: their loader checks them
        return
    from mixexp.data.indexed import dataset_problem

    problem = dataset_problem(data_cfg.prefix)
    if problem:
        raise ConfigError(f"data.prefix={data_cfg.prefix}: {problem}; point it at files written by preprocess.py "
                          f"(PREFIX.bin and PREFIX.idx)")


def prepare_data(data_cfg, seq_length: int) -> str | None:
    """Preprocess the raw input on first use; returns the prefix the workers read (None: synthetic)."""
    if data_cfg.kind == "synthetic":
        return None
    if data_cfg.prefix:
        _check_prefix(data_cfg)
        return data_cfg.prefix
    from mixexp.data.outputs import output_prefixes

    raw = _raw_path(data_cfg)
    instruction = data_cfg.kind == "instruction"
    handler = "alpaca" if instruction else "pretrain"
    # Instruction samples longer than seq_length are dropped, so the length is part of the key.
    key = _fingerprint(raw, data_cfg.kind, data_cfg.tokenizer, str(data_cfg.tokenizer_path), data_cfg.json_key,
                       str(seq_length) if instruction else "")
    base = Path(data_cfg.cache_dir) / f"{data_cfg.name}-{key}" / data_cfg.name
    outputs = output_prefixes(str(base), handler, (data_cfg.json_key,))
    # The workers read a pretrain dataset's prefix, or the instruction datasets' common stem.
    prefix = f"{base}_packed" if instruction else outputs[data_cfg.json_key]
    if all(os.path.exists(p + ".idx") for p in outputs.values()):
        return prefix
    from mixexp.data.preprocess import PreprocessError, preprocess

    base.parent.mkdir(parents=True, exist_ok=True)
    print(f"[data] preprocessing {raw} with the {data_cfg.tokenizer} tokenizer (cached in {base.parent})")
    try:
        preprocess(str(raw), str(base), handler=handler, tokenizer_kind=data_cfg.tokenizer,
                   tokenizer_path=data_cfg.tokenizer_path, json_keys=(data_cfg.json_key,), seq_length=seq_length)
    except PreprocessError as exc:
        raise ConfigError(f"data preprocessing failed: {exc}") from None
    return prefix


def _input_ids_index(prefix: str) -> str | None:
    """The input-ids .idx of an instruction prefix (PREFIX, PREFIX_packed or the input-ids file itself)."""
    stem = prefix[: -len("_packed")] if prefix.endswith("_packed") else prefix
    for candidate in (prefix, f"{stem}_packed_input_ids_document", f"{prefix}_input_ids_document"):
        if os.path.isfile(candidate + ".idx") and candidate.endswith("input_ids_document"):
            return candidate + ".idx"
    return None


def check_sample_lengths(data_cfg, prefix: str | None, seq_length: int) -> str | None:
    """Instruction rows longer than seq_length + 1 tokens would be cut. Packed rows (all one length) are
    refused: every pack would lose its tail. Longer unpacked samples are truncated; returns a note saying so."""
    if data_cfg.kind != "instruction" or prefix is None or (index := _input_ids_index(prefix)) is None:
        return None
    from mixexp.data.indexed import read_sequence_lengths

    lengths = read_sequence_lengths(index)
    longer = int((lengths > seq_length + 1).sum())
    if not longer:
        return None
    row = int(lengths.max())
    if int(lengths.min()) == row:  # what preprocess.py pack=true writes: every row padded to the pack length
        raise ConfigError(f"data.prefix={data_cfg.prefix} is packed in rows of {row} tokens but train.seq_length="
                          f"{seq_length} would cut every row to {seq_length + 1}: train with train.seq_length={row} "
                          f"(or preprocess again with seq_length={seq_length})")
    return (f"[data] {longer:,} of {len(lengths):,} samples are longer than train.seq_length={seq_length} "
            f"(up to {row} tokens) and are truncated to {seq_length + 1}")
