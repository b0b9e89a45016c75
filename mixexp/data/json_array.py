"""Stream the elements of a file holding one top-level JSON array, without loading it."""

from __future__ import annotations

import codecs
import json
from typing import Any, Iterator


class JSONArrayError(ValueError):
    """The file is not a well-formed JSON array; ``str(err)`` is one line naming the file."""


def starts_with_array(path: str) -> bool:
    """Whether the first non-blank character (after a BOM) is ``[``."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while head:
            # note: lstrip drops any of the three BOM bytes, not just a whole BOM
            stripped = head.lstrip(codecs.BOM_UTF8).lstrip()
            if stripped:
                return stripped[:1] == b"["
            head = f.read(4096)
    return False


def iter_json_array(path: str, block_bytes: int) -> Iterator[tuple[Any, int]]:
    """The elements of the top-level JSON array in ``path``: ``(value, bytes_read_so_far)``.

    Reads ``block_bytes`` at a time. Decodes with ``surrogateescape`` so invalid
    UTF-8 surfaces as lone surrogates in the affected strings (reported per row)
    instead of failing the file.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    with open(path, "rb") as f:
        buf, pos, eof = "", 0, False

        def fill() -> None:
            nonlocal buf, pos, eof
            data = f.read(block_bytes)
            eof = not data
            buf = buf[pos:] + utf8.decode(data, final=eof)
            pos = 0

        def skip_ws() -> bool:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf):
                    return True
                if eof:
                    return False
                fill()

        if not skip_ws() or buf[pos] != "[":
            raise JSONArrayError(f"{path}: invalid JSON: expected an array or JSON lines")
        pos += 1
        index = 0
        while True:
            if not skip_ws():
                raise JSONArrayError(f"{path}: invalid JSON: the array is not closed")
            if buf[pos] == "]":
                return
            if index:
                if buf[pos] != ",":
                    raise JSONArrayError(f"{path}: invalid JSON after element {index}: expected ',' or ']'")
                pos += 1
                if not skip_ws():
                    raise JSONArrayError(f"{path}: invalid JSON: the array is not closed")
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof:
                        raise JSONArrayError(
                            f"{path}: invalid JSON in element {index + 1}: {exc.msg}"
                        ) from None
                    fill()
                    continue
                if end == len(buf) and not eof:  # a number may continue in the next block
                    fill()
                    continue
                break
            pos = end
            index += 1
            yield value, f.tell()
