"""Writer for Megatron's indexed dataset format (``.bin`` + ``.idx``).

The files this module writes are byte-for-byte what
``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` writes for the
same token sequences, so ``megatron.core.datasets.indexed_dataset.IndexedDataset``,
Megatron-LM and MindSpeed-LLM read them. It depends on numpy only (no torch,
no megatron) so preprocessing starts fast.

Layout of ``PREFIX.idx`` (all integers little-endian)::

    offset  size            field
    0       9               magic b"MMIDIDX\\x00\\x00"
    9       8   uint64      version, always 1
    17      1   uint8       dtype code of the tokens in .bin (see DTYPE_CODES)
    18      8   uint64      S = number of sequences
    26      8   uint64      D = number of document boundaries (documents + 1)
    34      4*S int32       length of each sequence, in tokens
    ..      8*S int64       byte offset of each sequence in .bin
    ..      8*D int64       document indices: 0, then the sequence count at the
                            end of each document

``PREFIX.bin`` is the concatenation of all sequences in the chosen dtype.
A document here is always one sequence (no sentence splitting), as Megatron-LM's
``preprocess_data.py`` writes without ``--split-sentences``.

Outputs are written under temporary names in the target directory and only
renamed into place by :func:`commit`, so an interrupted run never leaves a
``.bin``/``.idx`` pair that looks valid.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from typing import Iterable, Sequence

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_SIZE = 34  # magic 9 + version 8 + dtype 1 + counts 8 + 8

# Megatron's DType enum: numpy dtype -> code stored in the .idx header.
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int | None) -> np.dtype:
    """The token dtype Megatron picks for a vocabulary: uint16 below 65500, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def _temp_name(path: str) -> str:
    """``.NAME.HOST.PID.tmp`` beside ``path``: the writer is named, so its leftovers can be recognized."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{socket.gethostname()}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_files(path: str) -> list[str]:
    """Remove the temporary files of ``path`` left by dead writers on this host (a killed run);
    returns them. Live writers' and other hosts' files are left alone."""
    head, tail = os.path.split(path)
    pattern = re.compile(rf"^\.{re.escape(tail)}\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp$")
    removed = []
    for name in os.listdir(head or "."):
        match = pattern.match(name)
        if match and match["host"] in (None, socket.gethostname()) and not _alive(int(match["pid"])):
            stale = os.path.join(head, name)
            try:
                os.unlink(stale)
            except FileNotFoundError:  # another run removed it first
                continue
            removed.append(stale)
    return removed


def encode_index(
    sequence_lengths: Sequence[int] | np.ndarray,
    document_indices: Sequence[int] | np.ndarray,
    dtype: np.dtype,
) -> bytes:
    """The full contents of an ``.idx`` file for these sequences and documents."""
    dtype = np.dtype(dtype)
    lengths = np.asarray(sequence_lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
        raise ValueError("sequence lengths must fit in int32")
    pointers = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    header = (
        INDEX_MAGIC
        + struct.pack("<Q", INDEX_VERSION)
        + struct.pack("<B", DTYPE_CODES[dtype])
        + struct.pack("<Q", lengths.size)
        + struct.pack("<Q", docs.size)
    )
    return b"".join(
        (
            header,
            lengths.astype("<i4").tobytes(),
            pointers.astype("<i8").tobytes(),
            docs.astype("<i8").tobytes(),
        )
    )


class _Int64Buffer:
    """Append-only growable int64 array (amortised O(1) appends of arrays)."""

    def __init__(self, initial: Iterable[int] = ()) -> None:
        init = np.fromiter(initial, dtype=np.int64)
        self._data = np.empty(max(1024, init.size), dtype=np.int64)
        self._data[: init.size] = init
        self._size = init.size

    def extend(self, values: np.ndarray) -> None:
        n = values.size
        if self._size + n > self._data.size:
            grown = np.empty(max(self._data.size * 2, self._size + n), dtype=np.int64)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : self._size + n] = values
        self._size += n

    def __len__(self) -> int:
        return self._size

    def array(self) -> np.ndarray:
        return self._data[: self._size]


class IndexedWriter:
    """Streams documents into ``PREFIX.bin`` / ``PREFIX.idx`` under temporary names.

    Each document is one sequence. Call :meth:`add_documents` with the tokens of
    many documents concatenated plus their lengths (fast path), or
    :meth:`add_document` with one. :meth:`close` writes the ``.idx`` (still under
    its temporary name); :func:`commit` renames a set of closed writers into
    place; :meth:`discard` removes the temporary files.
    """

    def __init__(self, prefix: str, dtype: np.dtype | type = np.int32) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported dtype for an indexed dataset: {self.dtype}")
        self.bin_path = bin_path(prefix)
        self.idx_path = idx_path(prefix)
        self.tmp_bin_path = _temp_name(self.bin_path)
        self.tmp_idx_path = _temp_name(self.idx_path)
        for output in (self.bin_path, self.idx_path):
            for stale in remove_stale_temp_files(output):
                print(f"preprocess: removed {stale}, left by a writer that is gone", file=sys.stderr)
        self._lengths = _Int64Buffer()
        self._doc_indices = _Int64Buffer([0])
        self._tokens = 0
        self._closed = False
        self._bin = open(self.tmp_bin_path, "wb")

    @property
    def num_tokens(self) -> int:
        return self._tokens

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` documents whose tokens are concatenated in ``tokens``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        tokens = np.asarray(tokens)
        if int(lengths.sum()) != tokens.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {tokens.size} tokens given")
        if tokens.dtype != self.dtype:
            if tokens.size and self.dtype.kind in "iu":
                info = np.iinfo(self.dtype)
                lo, hi = int(tokens.min()), int(tokens.max())
                if lo < info.min or hi > info.max:
                    raise ValueError(f"values {lo}..{hi} do not fit in {self.dtype}")
            tokens = tokens.astype(self.dtype)
        self._bin.write(tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        start = len(self._lengths)
        self._lengths.extend(lengths)
        self._doc_indices.extend(np.arange(start + 1, start + 1 + lengths.size, dtype=np.int64))
        self._tokens += tokens.size

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(tokens, dtype=self.dtype)
        self.add_documents(arr, np.array([arr.size], dtype=np.int64))

    def close(self) -> None:
        """Finish ``.bin`` and write ``.idx``, both still under temporary names."""
        if self._closed:
            return
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        data = encode_index(self._lengths.array(), self._doc_indices.array(), self.dtype)
        with open(self.tmp_idx_path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._closed = True

    def discard(self) -> None:
        """Drop the temporary files (after an error or interruption)."""
        try:
            self._bin.close()
        except Exception:  # pragma: no cover - closing a broken file
            pass
        for path in (self.tmp_bin_path, self.tmp_idx_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def commit(writers: Sequence[IndexedWriter]) -> None:
    """Move closed writers' files into place: old ``.idx`` first out, new ``.idx`` last in.

    Until the final ``.idx`` renames, no output prefix has both files from one
    run, so a reader never sees a half-written pair as valid.
    """
    for w in writers:
        w.close()
    for w in writers:
        try:
            os.unlink(w.idx_path)
        except FileNotFoundError:
            pass
    for w in writers:
        os.replace(w.tmp_bin_path, w.bin_path)
    for w in writers:
        os.replace(w.tmp_idx_path, w.idx_path)
    directories = {os.path.dirname(os.path.abspath(w.idx_path)) for w in writers}
    for d in directories:
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_indexed(prefix: str, documents: Iterable[Sequence[int]], dtype: np.dtype | type) -> None:
    """Write a whole dataset in one call (small data, tests)."""
    writer = IndexedWriter(prefix, dtype)
    try:
        for doc in documents:
            writer.add_document(doc)
        commit([writer])
    except BaseException:
        writer.discard()
        raise


def read_index_header(path: str) -> dict:
    """Parse an ``.idx`` header: ``dtype``, ``sequence_count``, ``document_count``."""
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or head[:9] != INDEX_MAGIC:
        raise ValueError(f"not a Megatron indexed dataset index: {path}")
    (version,) = struct.unpack("<Q", head[9:17])
    (code,) = struct.unpack("<B", head[17:18])
    seq_count, doc_count = struct.unpack("<QQ", head[18:34])
    return {
        "version": version,
        "dtype": CODE_DTYPES[code],
        "sequence_count": seq_count,
        "document_count": doc_count,
    }


def dataset_problem(prefix: str) -> str | None:
    """What makes ``PREFIX.bin``/``.idx`` unreadable, or None. Reads the header and the last entry only,
    so it costs nothing on a dataset of any size."""
    idx, bin_ = idx_path(prefix), bin_path(prefix)
    missing = [p for p in (bin_, idx) if not os.path.isfile(p)]
    if missing:
        return f"{' and '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist"
    try:
        header = read_index_header(idx)
    except (ValueError, KeyError, struct.error):
        return f"{idx} is not a Megatron index (bad header)"
    count, docs = header["sequence_count"], header["document_count"]
    expected = HEADER_SIZE + 12 * count + 8 * docs
    if os.path.getsize(idx) != expected:
        return f"{idx} is corrupt: {os.path.getsize(idx)} bytes, its header implies {expected}"
    if count:
        with open(idx, "rb") as f:
            f.seek(HEADER_SIZE + 4 * (count - 1))
            (last_length,) = struct.unpack("<i", f.read(4))
            f.seek(HEADER_SIZE + 4 * count + 8 * (count - 1))
            (last_pointer,) = struct.unpack("<q", f.read(8))
        need = last_pointer + last_length * header["dtype"].itemsize
        if os.path.getsize(bin_) < need:
            return f"{bin_} has {os.path.getsize(bin_)} bytes, its index needs {need} (truncated?)"
    return None


def read_sequence_lengths(path: str) -> np.ndarray:
    """The token count of every sequence of an ``.idx`` file (int32, right after the header)."""
    count = read_index_header(path)["sequence_count"]
    return np.fromfile(path, dtype=np.int32, count=count, offset=HEADER_SIZE)
