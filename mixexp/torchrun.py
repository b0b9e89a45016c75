"""torchrun that also records how its failed ranks ended.

    python -m mixexp.torchrun EXITS_JSON [torchrun's arguments ...]

A rank killed by a signal (the kernel's out-of-memory killer, `kill -9`, a segfault) writes no
error of its own; its peers then fail with "Connection closed by peer" and would be blamed.
torchrun knows each rank's exit code and signal but only prints them: this writes them to
EXITS_JSON as {global rank: {"exitcode", "signal"}} for `mixexp.launch.root_cause`.
"""

from __future__ import annotations

import json
import os
import sys


def write_exits(path: str, failures: dict) -> None:
    exits = {str(rank): {"exitcode": f.exitcode, "signal": f.signal_name() if f.exitcode < 0 else None}
             for rank, f in failures.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(exits, f)


def main(argv: list[str]) -> None:
    exits_path, torchrun_args = argv[0], argv[1:]
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args)
    except ChildFailedError as exc:
        write_exits(exits_path, exc.failures)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
