"""Handlers: how rows (already validated strings) become token sequences.

``pretrain``  one document per row and key in ``json_keys`` (default ``text``):
              ``[BOS] + encode(text) + [EOD]`` (BOS when ``add_bos``, EOD when
              ``append_eod``), written to ``{PREFIX}_{key}_document``.
``alpaca``    instruction / input / output rows through a prompt template:
              ``[BOS] + encode(prompt) + encode(output) + [EOS]``; the labels are the
              same ids with every prompt token (BOS included) replaced by -100, so
              only the response (and its EOS) is learned (MindSpeed-LLM's convention:
              labels are *not* shifted on disk). Written to
              ``{PREFIX}_packed_{input_ids,attention_mask,labels}_document``.

Column mapping: ``columns={"text": "content"}`` reads the ``content`` column for the
``text`` key (pretrain), ``columns={"instruction": "question", "output": "answer"}``
for alpaca. The alpaca ``input`` column is optional (missing or null means no
input) unless it is mapped explicitly.

Prompt templates (``prompt_template``): ``mixtral`` (default) gives
``[INST] {instruction}\\n\\n{input} [/INST]`` (``[INST] {instruction} [/INST]``
without input), as Mistral's v1 chat format; ``alpaca`` the Stanford Alpaca
prompt; ``plain`` the instruction and input on their own lines. Any other string
is a Python format string with ``{instruction}``, ``{input}`` and ``{prompt}``
(instruction plus input).

This module imports numpy only; tokenizers are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100
HANDLERS = ("pretrain", "alpaca")
ALPACA_FIELDS = ("instruction", "input", "output")
ALPACA_OUTPUT_KEYS = ("input_ids", "attention_mask", "labels")

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


class HandlerError(ValueError):
    """Bad handler options; one readable line."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    with_input: str
    without_input: str

    def render(self, instruction: str, input_text: str) -> str:
        prompt = f"{instruction}\n\n{input_text}" if input_text else instruction
        fmt = self.with_input if input_text else self.without_input
        return fmt.format(instruction=instruction, input=input_text, prompt=prompt)


PROMPT_TEMPLATES = {
    "mixtral": PromptTemplate("mixtral", "[INST] {prompt} [/INST]", "[INST] {prompt} [/INST]"),
    "alpaca": PromptTemplate("alpaca", _ALPACA_WITH_INPUT, _ALPACA_NO_INPUT),
    "plain": PromptTemplate("plain", "{instruction}\n{input}\n", "{instruction}\n"),
}


def get_prompt_template(spec: str) -> PromptTemplate:
    if spec in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[spec]
    if "{" in spec:
        try:
            spec.format(instruction="", input="", prompt="")
        except (KeyError, IndexError, ValueError) as exc:
            raise HandlerError(
                f"bad prompt_template {spec!r}: use {{instruction}}, {{input}} and {{prompt}} ({exc})"
            ) from None
        return PromptTemplate("custom", spec, spec)
    raise HandlerError(
        f"unknown prompt_template {spec!r} (expected one of: {', '.join(PROMPT_TEMPLATES)}, "
        "or a format string with {instruction}/{input}/{prompt})"
    )


@dataclass(frozen=True)
class HandlerSpec:
    """Everything a worker needs to tokenize rows; picklable."""

    name: str = "pretrain"
    json_keys: tuple[str, ...] = ("text",)
    columns: tuple[tuple[str, str], ...] = ()  # (field, source column)
    add_bos: bool = True
    append_eod: bool = True
    seq_length: int | None = None
    prompt_template: str = "mixtral"
    token_dtype: str = "uint16"  # dtype of pretrain outputs

    @property
    def fields(self) -> tuple[str, ...]:
        """The logical fields read from each row."""
        return self.json_keys if self.name == "pretrain" else ALPACA_FIELDS

    @property
    def optional_fields(self) -> frozenset[str]:
        if self.name == "alpaca" and "input" not in dict(self.columns):
            return frozenset({"input"})
        return frozenset()

    def column_for(self, field_name: str) -> str:
        return dict(self.columns).get(field_name, field_name)


def make_handler_spec(
    name: str,
    *,
    json_keys: Sequence[str] = ("text",),
    columns: Mapping[str, str] | None = None,
    add_bos: bool = True,
    append_eod: bool = True,
    seq_length: int | None = None,
    prompt_template: str = "mixtral",
    token_dtype: str = "uint16",
) -> HandlerSpec:
    if name not in HANDLERS:
        raise HandlerError(f"unknown handler {name!r} (expected one of: {', '.join(HANDLERS)})")
    if isinstance(json_keys, str):
        json_keys = (json_keys,)
    keys = tuple(json_keys)
    if name == "pretrain":
        if not keys:
            raise HandlerError("json_keys is empty: name at least one text column")
        if len(set(keys)) != len(keys):
            raise HandlerError(f"json_keys has duplicates: {', '.join(keys)}")
    columns = dict(columns or {})
    known = set(keys) if name == "pretrain" else set(ALPACA_FIELDS)
    for key, value in columns.items():
        if key not in known:
            raise HandlerError(
                f"columns maps {key!r}, which handler {name!r} does not read "
                f"(it reads: {', '.join(sorted(known))})"
            )
        if not isinstance(value, str) or not value:
            raise HandlerError(f"columns[{key!r}] must be a column name, got {value!r}")
    if seq_length is not None and int(seq_length) < 2:
        raise HandlerError(f"seq_length must be at least 2, got {seq_length}")
    if name == "alpaca":
        get_prompt_template(prompt_template)
    return HandlerSpec(
        name=name,
        json_keys=keys,
        columns=tuple(sorted(columns.items())),
        add_bos=bool(add_bos),
        append_eod=bool(append_eod),
        seq_length=int(seq_length) if seq_length is not None else None,
        prompt_template=prompt_template,
        token_dtype=token_dtype,
    )


@dataclass
class Tokenized:
    """What one chunk of rows becomes. Arrays are concatenations over documents."""

    # pretrain: key -> (tokens in the output dtype, lengths int64)
    documents: dict = field(default_factory=dict)
    # alpaca: input_ids int32, labels int32, lengths int64 (one entry per sample)
    input_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    lengths: np.ndarray | None = None
    empty: int = 0  # rows that produced no tokens (not written)
    too_long: int = 0  # alpaca samples longer than seq_length (not written)
    tokens: int = 0  # tokens written


def _concat(pieces: list[np.ndarray], lengths: np.ndarray, dtype) -> np.ndarray:
    out = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for piece in pieces:
        n = piece.size
        out[pos : pos + n] = piece
        pos += n
    return out


def tokenize_pretrain(spec: HandlerSpec, tokenizer, values: dict[str, list[str]]) -> Tokenized:
    """``values[key]``: the texts of the valid rows, in order."""
    result = Tokenized()
    bos = [tokenizer.bos_id] if spec.add_bos else []
    eod = [tokenizer.eod_id] if spec.append_eod else []
    head = np.asarray(bos, dtype=np.int32)
    tail = np.asarray(eod, dtype=np.int32)
    dtype = np.dtype(spec.token_dtype)
    for key in spec.json_keys:
        encoded = tokenizer.encode_batch(values[key])
        pieces: list[np.ndarray] = []
        lengths: list[int] = []
        for ids in encoded:
            if ids.size == 0:
                result.empty += 1
                continue
            if head.size:
                pieces.append(head)
            pieces.append(ids)
            if tail.size:
                pieces.append(tail)
            lengths.append(ids.size + head.size + tail.size)
        lens = np.asarray(lengths, dtype=np.int64)
        result.documents[key] = (_concat(pieces, lens, dtype), lens)
        result.tokens += int(lens.sum())
    return result


def tokenize_alpaca(spec: HandlerSpec, tokenizer, values: dict[str, list[str]]) -> Tokenized:
    template = get_prompt_template(spec.prompt_template)
    prompts = [
        template.render(ins, inp) for ins, inp in zip(values["instruction"], values["input"])
    ]
    enc_prompts = tokenizer.encode_batch(prompts)
    enc_outputs = tokenizer.encode_batch(values["output"])
    bos = np.asarray([tokenizer.bos_id] if spec.add_bos else [], dtype=np.int32)
    eos = np.asarray([tokenizer.eos_id] if spec.append_eod else [], dtype=np.int32)
    result = Tokenized()
    id_pieces: list[np.ndarray] = []
    label_pieces: list[np.ndarray] = []
    lengths: list[int] = []
    for p_ids, o_ids in zip(enc_prompts, enc_outputs):
        if o_ids.size == 0:
            result.empty += 1
            continue
        n_prompt = bos.size + p_ids.size
        n = n_prompt + o_ids.size + eos.size
        if spec.seq_length is not None and n > spec.seq_length:
            result.too_long += 1
            continue
        id_pieces += [bos, p_ids, o_ids, eos]
        label_pieces += [np.full(n_prompt, IGNORE_INDEX, dtype=np.int32), o_ids, eos]
        lengths.append(n)
    lens = np.asarray(lengths, dtype=np.int64)
    result.input_ids = _concat(id_pieces, lens, np.int32)
    result.labels = _concat(label_pieces, lens, np.int32)
    result.lengths = lens
    result.tokens = int(lens.sum())
    return result


def tokenize(spec: HandlerSpec, tokenizer, values: dict[str, list[str]]) -> Tokenized:
    if spec.name == "pretrain":
        return tokenize_pretrain(spec, tokenizer, values)
    return tokenize_alpaca(spec, tokenizer, values)


class SequencePacker:
    """Greedy, order-preserving packing of instruction samples into ``seq_length`` rows.

    Samples are appended to the open pack while they fit; then the pack is padded
    and emitted: ``input_ids`` padded with ``pad_id``, ``labels`` with -100, and
    ``attention_mask`` holding the 1-based index of the sample each token belongs
    to (0 on padding), as MindSpeed-LLM's ``neat_pack`` layout. Depends only on the
    order of the samples, so the output is the same for any number of workers.
    """

    def __init__(self, seq_length: int, pad_id: int) -> None:
        self.seq_length = int(seq_length)
        self.pad_id = int(pad_id)
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._used = 0
        self.packs = 0
        self.padding = 0

    def add(self, ids: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Add one sample; returns the packs completed by it (0 or 1)."""
        done = []
        if self._used + ids.size > self.seq_length and self._ids:
            done.append(self._emit())
        self._ids.append(ids)
        self._labels.append(labels)
        self._used += ids.size
        return done

    def flush(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [self._emit()] if self._ids else []

    def _emit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pad = self.seq_length - self._used
        ids = np.full(self.seq_length, self.pad_id, dtype=np.int32)
        labels = np.full(self.seq_length, IGNORE_INDEX, dtype=np.int32)
        mask = np.zeros(self.seq_length, dtype=np.int32)
        pos = 0
        for segment, (i, l) in enumerate(zip(self._ids, self._labels), start=1):
            ids[pos : pos + i.size] = i
            labels[pos : pos + i.size] = l
            mask[pos : pos + i.size] = segment
            pos += i.size
        self._ids, self._labels, self._used = [], [], 0
        self.packs += 1
        self.padding += pad
        return ids, mask, labels
