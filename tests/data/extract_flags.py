"""Extract the option strings of every `add_argument` call in Python sources.

Used to build the flag whitelists next to this file from the upstream argument
parsers (Megatron-LM's megatron/training/arguments.py, MindSpeed's
mindspeed/arguments.py and its features_manager). Static (ast): nothing is imported.

    git -C <mirror> show <commit>:<path> | python tests/data/extract_flags.py - > flags.txt
"""

from __future__ import annotations

import ast
import sys


def option_strings(source: str) -> set[str]:
    flags = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    flags.add(arg.value)
    return flags


def main(paths: list[str]) -> int:
    flags: set[str] = set()
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        flags |= option_strings(text)
    sys.stdout.write("".join(f"{f}\n" for f in sorted(flags)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["-"]))
