"""Tokenizers for preprocessing and training: Mixtral's, any SentencePiece, any HF tokenizer.json.

    load_tokenizer(kind="mixtral", path=None) -> Tokenizer

kinds:
  ``mixtral``       the Mixtral / Mistral-7B v1 SentencePiece model (32000 pieces)
                    that ships inside the ``mistral-common`` package
                    (``mistral_common/data/tokenizer.model.v1``); ``path`` overrides
                    the file (e.g. a checkpoint's ``tokenizer.model``). No download.
  ``sentencepiece`` any SentencePiece ``.model`` file (``path`` required).
  ``hf``            a Hugging Face ``tokenizer.json`` read with the ``tokenizers``
                    package (``path`` required: the file, or a directory holding it).
                    Special tokens come from ``tokenizer_config.json`` /
                    ``special_tokens_map.json`` beside it when present, else from
                    well-known token strings (``<s>``, ``</s>``, ``<|endoftext|>``...).

Every tokenizer has ``encode(text) -> list[int]`` (no BOS/EOS added),
``encode_batch(texts) -> list[numpy int32 arrays]`` (same ids, fast path),
``decode(ids) -> str``, ``bos_id``, ``eos_id``, ``eod_id`` (== ``eos_id``, as
Megatron's Llama/Mixtral tokenizers do), ``pad_id``, ``vocab_size``.

``pad_id``: the model's pad piece when it has one; Mixtral has none, so it is
``<unk>`` (0), kept distinct from EOS on purpose (pad == eos with ``append_eod``
is a known source of trouble in MindSpeed-LLM).

Importing this module is cheap: sentencepiece / tokenizers are imported when a
tokenizer is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Sequence

KINDS = ("mixtral", "sentencepiece", "hf")
MIXTRAL_MODEL_RELPATH = os.path.join("data", "tokenizer.model.v1")


class TokenizerError(ValueError):
    """A tokenizer cannot be loaded; the message is one readable line."""


def mixtral_model_path() -> str:
    """Path of the Mixtral SentencePiece model shipped in the mistral-common package."""
    spec = importlib.util.find_spec("mistral_common")  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            "the Mixtral tokenizer ships in the mistral-common package, which is not installed"
        )
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, MIXTRAL_MODEL_RELPATH)
        if os.path.isfile(candidate):
            return candidate
    raise TokenizerError(
        f"mistral-common is installed but has no {MIXTRAL_MODEL_RELPATH.replace(os.sep, '/')}"
    )


class Tokenizer:
    """Common interface; see the module docstring."""

    kind: str
    path: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    vocab_size: int

    @property
    def eod_id(self) -> int | None:
        return self.eos_id

    def encode(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # Picklable by reloading from (kind, path): worker processes get their own copy.
    def __getstate__(self) -> dict:
        return {"kind": self.kind, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        fresh = load_tokenizer(state["kind"], state["path"])
        self.__dict__.update(fresh.__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, path={self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str, kind: str = "sentencepiece") -> None:
        import sentencepiece as spm

        self.kind = kind
        self.path = path
        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as exc:  # sentencepiece raises OSError / RuntimeError
            raise TokenizerError(f"cannot load SentencePiece model {path}: {first_line(exc)}") from None
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = _nonneg(self._sp.bos_id())
        self.eos_id = _nonneg(self._sp.eos_id())
        pad = _nonneg(self._sp.pad_id())
        self.pad_id = pad if pad is not None else _nonneg(self._sp.unk_id())
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self._numpy_batch = True

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list:
        import numpy as np

        texts = list(texts)
        if self._numpy_batch:
            try:
                return self._sp.encode(texts, return_type="numpy", num_threads=1)
            except (TypeError, ValueError, AttributeError):  # older sentencepiece
                self._numpy_batch = False
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(texts, num_threads=1)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>", "[SEP]")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
_UNK_NAMES = ("<unk>", "[UNK]")


class HFTokenizer(Tokenizer):
    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _HF

        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
            if not os.path.isfile(path):
                raise TokenizerError(f"tokenizer file not found: {path}")
        self.kind = "hf"
        self.path = path
        try:
            self._tok = _HF.from_file(path)
        except Exception as exc:
            raise TokenizerError(f"cannot load tokenizer.json {path}: {first_line(exc)}") from None
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        named = _special_tokens_from_configs(os.path.dirname(os.path.abspath(path)))
        self.bos_id = self._resolve(named.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._resolve(named.get("eos_token"), _EOS_NAMES)
        pad = self._resolve(named.get("pad_token"), _PAD_NAMES)
        if pad is None:
            pad = self._resolve(named.get("unk_token"), _UNK_NAMES)
        self.pad_id = pad if pad is not None else self.eos_id

    def _resolve(self, configured: str | None, fallbacks: Sequence[str]) -> int | None:
        names = [configured] if configured else list(fallbacks)
        for name in names:
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return int(tid)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list:
        import numpy as np

        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def _special_tokens_from_configs(directory: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later wins
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value: Any = data.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                found[key] = value
    return found


def _nonneg(value: int) -> int | None:
    return int(value) if value is not None and value >= 0 else None


def first_line(exc: BaseException) -> str:
    """The first line of ``str(exc)`` (the exception's type name when empty)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def load_tokenizer(kind: str = "mixtral", path: str | None = None) -> Tokenizer:
    """Load a tokenizer; raises :class:`TokenizerError` with a one-line message."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r} (expected one of: {', '.join(KINDS)})")
    if kind == "mixtral":
        model = path or mixtral_model_path()
        _require_file(model)
        return SentencePieceTokenizer(model, kind="mixtral")
    if not path:
        raise TokenizerError(f"tokenizer kind {kind!r} needs a path (tokenizer.path=...)")
    if kind == "sentencepiece":
        _require_file(path)
        return SentencePieceTokenizer(path)
    if not os.path.exists(path):
        raise TokenizerError(f"tokenizer file not found: {path}")
    return HFTokenizer(path)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise TokenizerError(f"tokenizer file not found: {path}")
