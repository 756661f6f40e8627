"""A small progress bar on stderr (redrawn in place on a terminal, a line every ~10% otherwise)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total: int, desc: str = "", enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = max(total, 1), desc, enabled
        self.count, self.start, self.postfix = 0, time.monotonic(), ""
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        decile = self.count * 10 // self.total
        if self.tty or decile != self._last_decile or self.count == self.total:
            self._last_decile = decile
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        filled = int(24 * self.count / self.total)
        bar = "#" * filled + "." * (24 - filled)
        line = f"{self.desc} [{bar}] {self.count}/{self.total} {elapsed:.0f}s<{eta:.0f}s {self.postfix}"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress(items: Iterable[T], total: int, desc: str = "", enabled: bool = True) -> Iterator[T]:
    bar = Progress(total, desc, enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
