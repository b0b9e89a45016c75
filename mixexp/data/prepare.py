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


def output_prefix(data_cfg, kind: str) -> str | None:
    """The Megatron prefix the workers read, or None for synthetic data."""
    if kind == "synthetic":
        return None
    if data_cfg.prefix:
        return data_cfg.prefix
    raw = Path(data_cfg.raw_path)
    if not raw.is_absolute():
        raw = REPO_ROOT / raw
    if not raw.exists():
        raise ConfigError(f"data.raw_path={data_cfg.raw_path} does not exist; point it at a parquet/jsonl/json/csv/txt file "
                          f"or set data.prefix to files written by preprocess.py")
    key = _fingerprint(raw, kind, data_cfg.tokenizer, str(data_cfg.tokenizer_path), data_cfg.json_key)
    base = Path(data_cfg.cache_dir) / f"{data_cfg.name}-{key}" / data_cfg.name
    if kind == "instruction":
        return str(base) + "_packed"
    return f"{base}_{data_cfg.json_key}_document"


def prepare_data(data_cfg, seq_length: int) -> str | None:
    """Preprocess the raw input on first use; returns the prefix the workers read."""
    prefix = output_prefix(data_cfg, data_cfg.kind)
    if prefix is None or data_cfg.prefix:
        return prefix
    marker = prefix + ("_input_ids_document.idx" if data_cfg.kind == "instruction" else ".idx")
    if os.path.exists(marker):
        return prefix
    from mixexp.data.preprocess import PreprocessError, preprocess

    raw = Path(data_cfg.raw_path)
    raw = raw if raw.is_absolute() else REPO_ROOT / raw
    base = prefix.rsplit(f"_{data_cfg.json_key}_document", 1)[0] if data_cfg.kind != "instruction" else prefix[: -len("_packed")]
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    print(f"[data] preprocessing {raw} with the {data_cfg.tokenizer} tokenizer (cached in {Path(base).parent})")
    try:
        preprocess(str(raw), base, handler="alpaca" if data_cfg.kind == "instruction" else "pretrain",
                   tokenizer_kind=data_cfg.tokenizer, tokenizer_path=data_cfg.tokenizer_path,
                   json_keys=(data_cfg.json_key,), seq_length=seq_length)
    except PreprocessError as exc:
        raise ConfigError(f"data preprocessing failed: {exc}") from None
    return prefix
