"""preprocess(): every input format, handler, error path, workers, atomic outputs."""

import csv
import json
import os

import numpy as np
import pytest

from mixexp.data.preprocess import PreprocessError, preprocess
from mixexp.data.tokenizers import load_tokenizer

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — 東京",
    "Mixtral routes every token to two of its eight experts.",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _idx(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix)


def _docs(prefix):
    ds = _idx(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def _bytes(prefix):
    with open(prefix + ".bin", "rb") as b, open(prefix + ".idx", "rb") as i:
        return b.read(), i.read()


def _jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def _parquet(path, table_dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(table_dict), str(path), row_group_size=2)
    return str(path)


def _run(*args, **kwargs):
    kwargs.setdefault("show_progress", False)
    return preprocess(*args, **kwargs)


def _error(*args, **kwargs):
    with pytest.raises(PreprocessError) as info:
        _run(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- pretrain ------------------------------------------------------------------------


def test_pretrain_jsonl_tokens_and_report(tmp_path, tok):
    src = _jsonl(tmp_path / "in.jsonl", [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    report = _run(src, str(tmp_path / "out" / "corpus"))
    prefix = str(tmp_path / "out" / "corpus_text_document")
    docs = _docs(prefix)
    assert docs[0] == [1, 22557, 1526, 2]
    assert docs == [[1] + tok.encode(t) + [2] for t in TEXTS]
    assert _idx(prefix).index.dtype == np.uint16
    assert report["documents"] == 4 and report["rows"] == 4 and report["skipped"] == 0
    assert report["tokens"] == sum(len(d) for d in docs)
    assert report["outputs"] == {"text": prefix}
    assert report["output_paths"] == [prefix + ".bin", prefix + ".idx"]
    assert report["dtype"] == {"text": "uint16"}
    assert report["seconds"] > 0 and report["tokens_per_sec"] > 0
    assert sorted(os.listdir(tmp_path / "out")) == ["corpus_text_document.bin", "corpus_text_document.idx"]


def test_pretrain_matches_megatron_builder_byte_for_byte(tmp_path, tok):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    src = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS * 3])
    _run(src, str(tmp_path / "ours"))
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for text in TEXTS * 3:
        builder.add_item(torch.IntTensor([tok.bos_id] + tok.encode(text) + [tok.eod_id]))
        builder.end_document()
    builder.finalize(str(tmp_path / "ref.idx"))
    assert _bytes(str(tmp_path / "ours_text_document")) == _bytes(str(tmp_path / "ref"))


def test_bos_and_eod_options(tmp_path, tok):
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "Hello world"}])
    _run(src, str(tmp_path / "a"), add_bos=False)
    _run(src, str(tmp_path / "b"), append_eod=False)
    _run(src, str(tmp_path / "c"), add_bos=False, append_eod=False)
    assert _docs(str(tmp_path / "a_text_document")) == [[22557, 1526, 2]]
    assert _docs(str(tmp_path / "b_text_document")) == [[1, 22557, 1526]]
    assert _docs(str(tmp_path / "c_text_document")) == [[22557, 1526]]


def test_every_input_format_gives_the_same_tokens(tmp_path):
    rows = [{"text": t} for t in TEXTS]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = {
        "jsonl": _jsonl(inputs / "a.jsonl", rows),
        "parquet": _parquet(inputs / "b.parquet", {"text": TEXTS}),
        "txt": str(inputs / "c.txt"),
        "csv": str(inputs / "d.csv"),
        "json": str(inputs / "e.json"),
        "json_lines": str(tmp_path / "f.json"),
    }
    (inputs / "c.txt").write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(TEXTS):
            w.writerow([i, t])
    (inputs / "e.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    _jsonl(paths["json_lines"], rows)
    (inputs / "ignored.md").write_text("not data")
    expected = None
    for name, path in paths.items():
        _run(path, str(tmp_path / name))
        docs = _docs(str(tmp_path / f"{name}_text_document"))
        expected = expected or docs
        assert docs == expected, name
    report = _run(str(inputs), str(tmp_path / "dir"))
    assert report["files"] == 5
    assert _docs(str(tmp_path / "dir_text_document")) == expected * 5


def test_column_mapping_and_several_keys(tmp_path, tok):
    rows = [{"content": t, "title": f"Title {i}"} for i, t in enumerate(TEXTS)]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    _run(src, str(tmp_path / "m"), columns={"text": "content"})
    assert _docs(str(tmp_path / "m_text_document")) == [[1] + tok.encode(t) + [2] for t in TEXTS]
    report = _run(src, str(tmp_path / "k"), json_keys=["content", "title"])
    assert set(report["outputs"]) == {"content", "title"}
    assert _docs(str(tmp_path / "k_title_document"))[2] == [1] + tok.encode("Title 2") + [2]


def test_same_bytes_for_any_number_of_workers(tmp_path):
    rows = [{"text": f"Document {i}: " + " ".join(TEXTS[: 1 + i % 4]) * (1 + i % 7)} for i in range(700)]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    outs = []
    for workers in (1, 2, 3):
        _run(src, str(tmp_path / f"w{workers}"), workers=workers, chunk_rows=64)
        outs.append(_bytes(str(tmp_path / f"w{workers}_text_document")))
    assert outs[0] == outs[1] == outs[2]
    pq_src = _parquet(tmp_path / "in.parquet", {"text": [r["text"] for r in rows]})
    _run(pq_src, str(tmp_path / "p2"), workers=2, chunk_rows=50)
    assert _bytes(str(tmp_path / "p2_text_document")) == outs[0]


def test_empty_texts_are_not_written(tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "Hello world"}, {"text": ""}, {"text": "Hello world"}])
    report = _run(src, str(tmp_path / "o"))
    assert report["empty"] == 1 and report["documents"] == 2 and report["rows"] == 3


# --- alpaca ----------------------------------------------------------------------------

ALPACA = [
    {"instruction": "What is 2+2?", "input": "", "output": "4"},
    {"instruction": "Reverse the word.", "input": "apple", "output": "elppa"},
    {"instruction": "Say hello.", "output": "Hello world"},  # no input column at all
]


def test_alpaca_prompt_is_masked(tmp_path, tok):
    src = _jsonl(tmp_path / "a.jsonl", ALPACA)
    report = _run(src, str(tmp_path / "sft"), handler="alpaca")
    prefixes = report["outputs"]
    assert prefixes == {
        k: str(tmp_path / f"sft_packed_{k}_document") for k in ("input_ids", "attention_mask", "labels")
    }
    ids, masks, labels = (_docs(prefixes[k]) for k in ("input_ids", "attention_mask", "labels"))
    prompt = [1] + tok.encode("[INST] What is 2+2? [/INST]")
    answer = tok.encode("4") + [2]
    assert ids[0] == prompt + answer
    assert labels[0] == [-100] * len(prompt) + answer
    assert masks[0] == [1] * len(ids[0])
    assert ids[1][: len(prompt) + 1] != prompt  # input joins the prompt
    p1 = [1] + tok.encode("[INST] Reverse the word.\n\napple [/INST]")
    assert ids[1] == p1 + tok.encode("elppa") + [2]
    assert labels[2][-len(tok.encode("Hello world")) - 1 :] == tok.encode("Hello world") + [2]
    for k in prefixes.values():
        assert _idx(k).index.dtype == np.int32
    assert report["documents"] == 3


def test_alpaca_templates_and_column_mapping(tmp_path, tok):
    rows = [{"question": r["instruction"], "answer": r["output"]} for r in ALPACA]
    src = _jsonl(tmp_path / "q.jsonl", rows)
    _run(src, str(tmp_path / "x"), handler="alpaca", prompt_template="alpaca",
         columns={"instruction": "question", "output": "answer"})
    ids = _docs(str(tmp_path / "x_packed_input_ids_document"))
    prompt = ("Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n")
    assert ids[0] == [1] + tok.encode(prompt) + tok.encode("4") + [2]
    _run(src, str(tmp_path / "y"), handler="alpaca", prompt_template="Q: {instruction}\nA:",
         columns={"instruction": "question", "output": "answer"})
    assert _docs(str(tmp_path / "y_packed_input_ids_document"))[0] == (
        [1] + tok.encode("Q: What is 2+2?\nA:") + tok.encode("4") + [2]
    )


def test_alpaca_pack_and_seq_length(tmp_path, tok):
    rows = [{"instruction": f"Repeat the number {i}.", "input": "", "output": f"{i} " * (1 + i % 9)} for i in range(60)]
    src = _jsonl(tmp_path / "a.jsonl", rows)
    plain = _run(src, str(tmp_path / "plain"), handler="alpaca")
    samples = _docs(str(tmp_path / "plain_packed_input_ids_document"))
    sample_labels = _docs(str(tmp_path / "plain_packed_labels_document"))
    report = _run(src, str(tmp_path / "pk"), handler="alpaca", pack=True, seq_length=64)
    ids = _docs(str(tmp_path / "pk_packed_input_ids_document"))
    seg = _docs(str(tmp_path / "pk_packed_attention_mask_document"))
    lab = _docs(str(tmp_path / "pk_packed_labels_document"))
    assert all(len(x) == 64 for x in ids + seg + lab)
    assert report["packs"] == len(ids) < len(samples)
    # unpack: segments in order give back every sample with its labels
    rebuilt, rebuilt_labels = [], []
    for row_ids, row_seg, row_lab in zip(ids, seg, lab):
        row_seg = np.array(row_seg)
        for s in range(1, row_seg.max() + 1):
            rebuilt.append(np.array(row_ids)[row_seg == s].tolist())
            rebuilt_labels.append(np.array(row_lab)[row_seg == s].tolist())
        pad = row_seg == 0
        assert (np.array(row_ids)[pad] == tok.pad_id).all() and (np.array(row_lab)[pad] == -100).all()
    assert rebuilt == samples and rebuilt_labels == sample_labels
    assert report["padding_tokens"] == 64 * len(ids) - sum(map(len, samples))
    outs = [_bytes(str(tmp_path / "pk_packed_labels_document"))]
    _run(src, str(tmp_path / "pk"), handler="alpaca", pack=True, seq_length=64, workers=2, chunk_rows=7)
    outs.append(_bytes(str(tmp_path / "pk_packed_labels_document")))
    assert outs[0] == outs[1]
    # samples longer than seq_length are dropped and counted
    longest = max(map(len, samples))
    report = _run(src, str(tmp_path / "short"), handler="alpaca", seq_length=longest - 1)
    assert report["too_long"] == sum(len(s) > longest - 1 for s in samples) > 0
    assert report["documents"] == 60 - report["too_long"]


# --- bad input ---------------------------------------------------------------------------


def test_missing_file_and_formats(tmp_path):
    missing = str(tmp_path / "nope.parquet")
    assert _error(missing, str(tmp_path / "o")) == f"input not found: {missing}"
    xml = tmp_path / "data.xml"
    xml.write_text("<a/>")
    assert _error(str(xml), str(tmp_path / "o")) == (
        f"unsupported input format '.xml': {xml} (expected .parquet, .jsonl, .json, .csv, .txt or a directory)"
    )
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert _error(str(empty_dir), str(tmp_path / "o")) == (
        f"no input files (.csv, .json, .jsonl, .ndjson, .parquet, .txt) in directory: {empty_dir}"
    )


def test_missing_column_names_existing_columns(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "input": "", "output": "y"}])
    assert _error(src, str(tmp_path / "o")) == (
        f"column 'text' not found in {src}; columns: 'instruction', 'input', 'output'"
    )
    pq_src = _parquet(tmp_path / "a.parquet", {"body": ["x"], "n": [1]})
    assert _error(pq_src, str(tmp_path / "o"), handler="alpaca") == (
        f"column 'instruction' not found in {pq_src}; columns: 'body', 'n'"
    )
    csv_src = tmp_path / "a.csv"
    csv_src.write_text("title,body\nx,y\n")
    assert _error(str(csv_src), str(tmp_path / "o"), columns={"text": "content"}) == (
        f"column 'content' not found in {csv_src}; columns: 'title', 'body'"
    )


def test_bad_values_fail_with_row_and_reason(tmp_path):
    hint = " (skip_bad_rows=true skips bad rows)"
    cases = {
        "null": ('{"text": "ok"}\n{"text": null}\n', "line 2: column 'text' is null"),
        "number": ('{"text": "ok"}\n\n{"text": 42}\n', "line 3: column 'text' is a number, expected a string"),
        "list": ('{"text": ["a"]}\n', "line 1: column 'text' is an array, expected a string"),
        "missing": ('{"text": "ok"}\n{"body": "x"}\n', "line 2: column 'text' is missing"),
        "json": ('{"text": "ok"}\n{"text": "unterminated\n', "line 2: invalid JSON (Unterminated string starting at at column 10)"),
        "object": ('{"text": "ok"}\n["text"]\n', "line 2: not a JSON object (an array)"),
    }
    for name, (content, reason) in cases.items():
        src = tmp_path / f"{name}.jsonl"
        src.write_text(content)
        assert _error(str(src), str(tmp_path / "o")) == f"{src}: {reason}{hint}", name
    utf8 = tmp_path / "utf8.jsonl"
    utf8.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert _error(str(utf8), str(tmp_path / "o")) == (
        f"{utf8}: line 2: invalid UTF-8 (byte 0xe9 at offset 13){hint}"
    )
    pq_src = _parquet(tmp_path / "n.parquet", {"text": ["a", "b", None, "d"]})
    assert _error(pq_src, str(tmp_path / "o")) == f"{pq_src}: row 3: column 'text' is null{hint}"
    typed = _parquet(tmp_path / "t.parquet", {"text": [1, 2]})
    assert _error(typed, str(tmp_path / "o")) == f"{typed}: column 'text' has type int64, expected string"
    arr = tmp_path / "arr.json"
    arr.write_bytes(b'[{"text": "ok"}, {"text": "caf\xe9"}, {"text": 3}]')
    assert _error(str(arr), str(tmp_path / "o")) == (
        f"{arr}: row 2: column 'text' is invalid UTF-8 (at character 3){hint}"
    )
    assert not [p for p in os.listdir(tmp_path) if p.startswith(("o_", ".o_"))]


def test_invalid_utf8_in_parquet_and_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pa.array([b"good", b"bad \xff", b"fine"], type=pa.binary())
    pq.write_table(pa.table({"text": values}), str(tmp_path / "b.parquet"))
    hint = " (skip_bad_rows=true skips bad rows)"
    assert _error(str(tmp_path / "b.parquet"), str(tmp_path / "o")) == (
        f"{tmp_path / 'b.parquet'}: row 2: column 'text' is invalid UTF-8 (byte 0xff at offset 4){hint}"
    )
    (tmp_path / "c.csv").write_bytes(b"text\ngood\nbad \xfe\n")
    assert _error(str(tmp_path / "c.csv"), str(tmp_path / "o")) == (
        f"{tmp_path / 'c.csv'}: row 2: column 'text' is invalid UTF-8 (byte 0xfe at offset 4){hint}"
    )


def test_empty_input(tmp_path):
    for name, content in {"e.jsonl": "", "b.jsonl": "\n\n  \n", "e.txt": "", "e.json": "[]", "e.csv": "text\n"}.items():
        src = tmp_path / name
        src.write_text(content)
        assert _error(str(src), str(tmp_path / "o")) == f"no rows in input: {src}", name
    src = _jsonl(tmp_path / "blank.jsonl", [{"text": ""}])
    assert _error(src, str(tmp_path / "o")) == f"nothing to write from {src}: 1 rows, 0 skipped as bad, 1 empty"


def test_skip_bad_rows_counts_and_reports(tmp_path, tok):
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(
        b'{"text": "Hello world"}\n{"text": null}\n{"text": 7}\nnot json\n'
        b'{"text": "caf\xe9"}\n{"other": "x"}\n{"text": "The end."}\n'
    )
    report = _run(str(src), str(tmp_path / "s"), skip_bad_rows=True)
    assert _docs(str(tmp_path / "s_text_document")) == [[1, 22557, 1526, 2], [1] + tok.encode("The end.") + [2]]
    assert report["rows"] == 7 and report["skipped"] == 5 and report["documents"] == 2
    assert report["skipped_reasons"] == {
        "null": 1, "not a string": 1, "invalid JSON": 1, "invalid UTF-8": 1, "missing column": 1,
    }
    assert report["skipped_examples"][0] == f"{src}: line 2: column 'text' is null"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,text\n1,Hello world\n2\n3,The end.\n")
    assert _error(str(bad_csv), str(tmp_path / "c")) == (
        f"{bad_csv}: line 3: expected 2 columns, got 1 (skip_bad_rows=true skips bad rows)"
    )
    report = _run(str(bad_csv), str(tmp_path / "c"), skip_bad_rows=True)
    assert report["skipped_reasons"] == {"malformed CSV row": 1} and report["documents"] == 2
    assert report["skipped_examples"] == [f"{bad_csv}: line 3: expected 2 columns, got 1"]
    all_bad = _jsonl(tmp_path / "allbad.jsonl", [{"text": None}, {"text": 1}])
    assert _error(all_bad, str(tmp_path / "z"), skip_bad_rows=True) == (
        f"nothing to write from {all_bad}: 2 rows, 2 skipped as bad, 0 empty"
    )


def test_option_errors(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    out = str(tmp_path / "o")
    assert _error(src, out, handler="sharegpt") == "unknown handler 'sharegpt' (expected one of: pretrain, alpaca)"
    assert _error(src, out, tokenizer_kind="tiktoken") == (
        "unknown tokenizer kind 'tiktoken' (expected one of: mixtral, sentencepiece, hf)"
    )
    assert _error(src, out, pack=True) == (
        "pack=true is for instruction handlers (alpaca); pretraining data is not packed"
    )
    assert _error(src, out, handler="alpaca", pack=True) == "pack=true needs seq_length (e.g. seq_length=4096)"
    assert _error(src, out, workers=0) == "workers must be at least 1, got 0"
    assert _error(src, "") == "output_prefix is required (e.g. output_prefix=data/my_corpus)"
    assert _error(src, out, handler="alpaca", prompt_template="chatml") .startswith(
        "unknown prompt_template 'chatml' (expected one of: mixtral, alpaca, plain")
    assert _error(src, out, columns={"body": "x"}) == (
        "columns maps 'body', which handler 'pretrain' does not read (it reads: text)"
    )


def test_failed_run_keeps_previous_outputs_and_leaves_no_temp_files(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "Hello world"}])
    _run(good, str(tmp_path / "out"))
    before = _bytes(str(tmp_path / "out_text_document"))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}] * 2000 + [{"text": None}])
    _error(bad, str(tmp_path / "out"), workers=2, chunk_rows=100)
    assert _bytes(str(tmp_path / "out_text_document")) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "good.jsonl", "out_text_document.bin", "out_text_document.idx"]


def test_interrupted_run_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    import mixexp.data.readers as pp
    from mixexp.data import indexed

    monkeypatch.setattr(pp, "CHUNK_BYTES", 256)
    src = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS * 50])
    calls = []
    real = indexed.IndexedWriter.add_documents

    def interrupted(self, tokens, lengths):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, tokens, lengths)

    monkeypatch.setattr(indexed.IndexedWriter, "add_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(src, str(tmp_path / "out"), workers=2, chunk_rows=10, handler="pretrain")
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_json_array_streams_across_small_blocks(tmp_path, monkeypatch, tok):
    import mixexp.data.readers as pp

    monkeypatch.setattr(pp, "CHUNK_BYTES", 7)  # objects, strings and numbers split between reads
    rows = [{"text": t, "n": 12345678901234} for t in TEXTS] + [{"text": "Hello world", "n": 1.5e300}]
    src = tmp_path / "a.json"
    src.write_text("\ufeff [\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n", encoding="utf-8")
    report = _run(str(src), str(tmp_path / "o"), chunk_rows=2)
    assert _docs(str(tmp_path / "o_text_document")) == [[1] + tok.encode(r["text"]) + [2] for r in rows]
    assert report["rows"] == 5
    broken = tmp_path / "broken.json"
    broken.write_text('[{"text": "a"}, {"text": "b"')
    assert _error(str(broken), str(tmp_path / "o")) == (
        f"{broken}: invalid JSON in element 2: Expecting ',' delimiter"
    )
    not_array = tmp_path / "scalar.json"
    not_array.write_text('"just a string"')
    assert _error(str(not_array), str(tmp_path / "o")) == (
        f"{not_array}: line 1: not a JSON object (a string){' (skip_bad_rows=true skips bad rows)'}"
    )


def test_hf_tokenizer_end_to_end(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    hf = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}, {"text": "world mars"}])
    report = _run(src, str(tmp_path / "o"), tokenizer_kind="hf", tokenizer_path=str(tmp_path / "tokenizer.json"))
    assert _docs(str(tmp_path / "o_text_document")) == [[1, 3, 4, 2], [1, 4, 0, 2]]
    assert report["tokenizer"]["vocab_size"] == 5 and report["dtype"] == {"text": "uint16"}
    bare = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare.save(str(tmp_path / "bare.json"))
    assert _error(src, str(tmp_path / "b"), tokenizer_kind="hf", tokenizer_path=str(tmp_path / "bare.json")) == (
        f"tokenizer {tmp_path / 'bare.json'} has no BOS token; set add_bos=false"
    )
    _run(src, str(tmp_path / "b"), tokenizer_kind="hf", tokenizer_path=str(tmp_path / "bare.json"),
         add_bos=False, append_eod=False)
    assert _docs(str(tmp_path / "b_text_document")) == [[1, 0], [0, 0]]


def test_megatron_gpt_dataset_trains_on_our_output(tmp_path, tok):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    class _Tok:
        vocab_size, eod, pad = tok.vocab_size, tok.eod_id, -1
        unique_identifiers = {"class": "test", "vocab_size": tok.vocab_size}

    src = _jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS * 10])
    _run(src, str(tmp_path / "c"))
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=16, blend=([str(tmp_path / "c_text_document")], None), split="100,0,0",
        tokenizer=_Tok(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False, path_to_cache=str(tmp_path / "cache"),
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [20, 0, 0], lambda: True, config).build()
    docs = [[1] + tok.encode(text) + [2] for text in TEXTS]

    def inside_a_document(piece):
        return any(d[j:j + len(piece)] == piece for d in docs for j in range(len(d)))

    for i in range(5):
        item = train[i]
        tokens, labels = item["tokens"].tolist(), item["labels"].tolist()
        assert tokens[1:] == labels[:-1]
        window = tokens + labels[-1:]
        cuts = [0] + [j + 1 for j, t in enumerate(window) if t == 2] + [len(window)]
        pieces = [window[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
        assert pieces and all(inside_a_document(p) for p in pieces)
