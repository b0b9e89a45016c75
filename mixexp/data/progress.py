"""A rich progress bar on stderr for preprocessing: input bytes done, rows/s, tokens/s."""

from __future__ import annotations

import time


class Progress:
    """Does nothing when ``enabled`` is false (rich is then not imported)."""

    def __init__(self, enabled: bool, total_units: float, label: str) -> None:
        self.total = max(total_units, 1.0)
        self._progress = None
        self._task = None
        self._start = time.perf_counter()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RichProgress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self._progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows · {task.fields[rps]:,.0f} rows/s · {task.fields[tps]:,.0f} tokens/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=self.total, rows=0, rps=0.0, tps=0.0)

    def update(self, units: float, rows: int, tokens: int) -> None:
        if not self._progress:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._progress.update(self._task, advance=units, rows=rows, rps=rows / elapsed, tps=tokens / elapsed)

    def stop(self, complete: bool) -> None:
        if not self._progress:
            return
        if complete:
            self._progress.update(self._task, completed=self.total)
        self._progress.stop()
