"""Lines on stderr, and the progress bar below them."""

from __future__ import annotations

import sys
import threading
from typing import Any

from o2v_batch.reporting.messages import count


def stderr_line(line: str) -> None:
    """Prints a line on stderr above the progress bar, never onto it."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:  # so no bar was ever drawn: a job without one never imports tqdm
        print(line, file=sys.stderr)
        return
    tqdm.tqdm.write(line, file=sys.stderr)


# Seconds between redraws of the bar while nothing changes: its time keeps moving.
REDRAW_S = 0.5
# The bar before any bytes are done: tqdm would write 0 bytes as "0.00".
_NOTHING_DONE = {
    True: "{l_bar}{bar}| 0/{total_fmt} [{elapsed}<?{postfix}]",  # a total is known
    False: "{desc}: 0B [{elapsed}{postfix}]",
}


class Progress:
    """The input bytes done (a total and an ETA when every shard's size is known) and
    the records done, on stderr. Bytes are done once the records read from them are
    written (or their shard has failed), so 100% means written. Drawn from the start
    and redrawn every REDRAW_S on a thread, so its time and rate move while workers
    start. Silent when disabled, so callers never test for None; None: on when stderr
    is a terminal."""

    def __init__(self, enabled: bool | None, total_bytes: int | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total_bytes = total_bytes
        self._bar: Any = None
        self._closing = threading.Event()
        self._redraws: threading.Thread | None = None
        if self.enabled:
            self._start()

    def _start(self) -> None:
        from tqdm import tqdm  # only a job needs it, not --help

        self._bar = tqdm(
            total=self.total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="o2v-batch",
            file=sys.stderr,
            postfix="0 records",
            bar_format=_NOTHING_DONE[bool(self.total_bytes)],
        )
        self._redraws = threading.Thread(
            target=self._redraw, name="o2v-batch progress", daemon=True
        )
        self._redraws.start()

    def _redraw(self) -> None:
        while not self._closing.wait(REDRAW_S):
            self._bar.refresh()

    def show(self, nbytes: int, records: int) -> None:
        """Moves the bar to `nbytes` done and `records` records (both so far, in all)."""
        if self._bar is None:
            return
        self._bar.set_postfix_str(f"{count(records)} records", refresh=False)
        first = nbytes > 0 and self._bar.bar_format is not None
        if first:
            self._bar.bar_format = None  # tqdm's own from now on, with the rate and the ETA
        self._bar.update(nbytes - self._bar.n)
        if first:
            self._bar.refresh()  # at once, not after tqdm's minimum interval

    def close(self) -> None:
        """Stops the bar; once closed, closing again does nothing."""
        if self._bar is not None:
            self._closing.set()
            self._redraws.join()
            self._bar.close()
            self._bar = None
