"""Our .bin/.idx writer against Megatron's format, byte for byte."""

import os
import socket
import struct

import numpy as np
import pytest

from mixexp.data import indexed


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_idx_layout_is_pinned_byte_by_byte(tmp_path):
    prefix = str(tmp_path / "ds")
    indexed.write_indexed(prefix, [[1, 2, 3], [65000, 7]], np.uint16)
    expected_idx = (
        b"MMIDIDX\x00\x00"  # magic
        + b"\x01\x00\x00\x00\x00\x00\x00\x00"  # version 1, uint64
        + b"\x08"  # dtype code 8 = uint16
        + b"\x02\x00\x00\x00\x00\x00\x00\x00"  # 2 sequences
        + b"\x03\x00\x00\x00\x00\x00\x00\x00"  # 3 document indices
        + b"\x03\x00\x00\x00" + b"\x02\x00\x00\x00"  # lengths, int32
        + b"\x00" * 8 + b"\x06" + b"\x00" * 7  # byte pointers 0, 6, int64
        + b"\x00" * 8 + b"\x01" + b"\x00" * 7 + b"\x02" + b"\x00" * 7  # documents 0, 1, 2
    )
    assert _read(prefix + ".idx") == expected_idx
    assert len(expected_idx) == 34 + 2 * 4 + 2 * 8 + 3 * 8
    assert _read(prefix + ".bin") == b"\x01\x00\x02\x00\x03\x00\xe8\xfd\x07\x00"


def test_int32_dtype_code_and_pointers(tmp_path):
    prefix = str(tmp_path / "ds")
    indexed.write_indexed(prefix, [[-100, 5], [9], [1, 2, 3, 4]], np.int32)
    idx = _read(prefix + ".idx")
    assert idx[17] == 4  # int32
    assert struct.unpack("<QQ", idx[18:34]) == (3, 4)
    assert np.frombuffer(idx, dtype="<i8", count=3, offset=34 + 12).tolist() == [0, 8, 12]
    assert np.frombuffer(_read(prefix + ".bin"), dtype="<i4").tolist() == [-100, 5, 9, 1, 2, 3, 4]
    assert indexed.read_index_header(prefix + ".idx") == {
        "version": 1, "dtype": np.dtype(np.int32), "sequence_count": 3, "document_count": 4,
    }


def test_optimal_dtype_matches_megatron():
    from megatron.core.datasets.indexed_dataset import DType

    for vocab in (None, 1000, 32000, 65499, 65500, 131072):
        assert indexed.optimal_dtype(vocab) == np.dtype(DType.optimal_dtype(vocab))
    assert indexed.optimal_dtype(32000) == np.uint16
    assert indexed.optimal_dtype(65500) == np.int32
    for dtype, code in indexed.DTYPE_CODES.items():
        assert DType.code_from_dtype(dtype.type) == code


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_same_bytes_as_megatron_builder(tmp_path, dtype):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    low = -100 if dtype != np.uint16 else 0
    docs = [rng.integers(low, 32000, size=int(rng.integers(0, 50))).tolist() for _ in range(40)]
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    # our fast path: many documents per call
    writer = indexed.IndexedWriter(ours, dtype)
    flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    writer.add_documents(flat[:0], np.zeros(0, dtype=np.int64))
    half = sum(len(d) for d in docs[:17])
    writer.add_documents(flat[:half], np.array([len(d) for d in docs[:17]]))
    for d in docs[17:]:
        writer.add_document(d)
    indexed.commit([writer])
    builder = IndexedDatasetBuilder(theirs + ".bin", dtype=dtype)
    for d in docs:
        builder.add_item(torch.tensor(d, dtype=torch.int64))
        builder.end_document()
    builder.finalize(theirs + ".idx")
    assert _read(ours + ".idx") == _read(theirs + ".idx")
    assert _read(ours + ".bin") == _read(theirs + ".bin")


def test_megatron_reader_reads_our_files(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = str(tmp_path / "ds")
    docs = [[1, 22557, 1526, 2], [1, 2], [1, 415, 2]]
    indexed.write_indexed(prefix, docs, np.uint16)
    ds = IndexedDataset(prefix)
    assert len(ds) == 3
    assert ds.index.dtype == np.uint16
    assert [ds[i].tolist() for i in range(3)] == docs
    assert ds.document_indices.tolist() == [0, 1, 2, 3]
    assert ds.sequence_lengths.tolist() == [4, 2, 3]
    assert ds.get(0, offset=1, length=2).tolist() == [22557, 1526]


def test_temporary_names_until_commit(tmp_path):
    prefix = str(tmp_path / "ds")
    writer = indexed.IndexedWriter(prefix, np.uint16)
    writer.add_document([1, 2, 3])
    writer.close()
    host = socket.gethostname()
    assert sorted(os.listdir(tmp_path)) == [f".ds.bin.{host}.{os.getpid()}.tmp", f".ds.idx.{host}.{os.getpid()}.tmp"]
    writer.discard()
    assert os.listdir(tmp_path) == []


def test_commit_replaces_previous_output(tmp_path):
    prefix = str(tmp_path / "ds")
    indexed.write_indexed(prefix, [[1, 2, 3]], np.uint16)
    indexed.write_indexed(prefix, [[4], [5]], np.uint16)
    assert sorted(os.listdir(tmp_path)) == ["ds.bin", "ds.idx"]
    assert indexed.read_index_header(prefix + ".idx")["sequence_count"] == 2
    assert _read(prefix + ".bin") == b"\x04\x00\x05\x00"


def test_writer_rejects_bad_input(tmp_path):
    writer = indexed.IndexedWriter(str(tmp_path / "ds"), np.uint16)
    with pytest.raises(ValueError, match="lengths sum to 3 but 2 tokens given"):
        writer.add_documents(np.array([1, 2]), np.array([3]))
    with pytest.raises(ValueError, match=r"values -100\.\.5 do not fit in uint16"):
        writer.add_documents(np.array([-100, 5], dtype=np.int32), np.array([2]))
    writer.discard()
    with pytest.raises(ValueError, match="unsupported dtype"):
        indexed.IndexedWriter(str(tmp_path / "x"), np.uint32)
    (tmp_path / "bad.idx").write_bytes(b"NOTMAGIC" + b"\x00" * 40)
    with pytest.raises(ValueError, match="not a Megatron indexed dataset index"):
        indexed.read_index_header(str(tmp_path / "bad.idx"))
