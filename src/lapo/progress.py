"""A progress bar over named steps of very different lengths, in estimated seconds.

``lapo demo`` runs its stages one after another and ``lapo reproduce`` runs grid steps several
at a time; both know roughly how long each step takes. Counting steps would give an ETA that
is wrong by hours (a 20-minute stage 1 and a 30-second evaluation are one step each), so the
bar counts estimated seconds instead: a running step advances with the clock up to 95% of its
estimate, a finished one jumps to its full estimate, and the ETA improves as steps finish.
"""

from __future__ import annotations

import sys
import threading
import time


class EstimatedProgress:
    """One bar over the steps ``weights`` (name -> estimated seconds); ``done`` are counted as
    finished from the start. Any number of steps may run at once."""

    def __init__(
        self, weights: dict[str, float], done: set[str], enabled: bool, desc: str = ""
    ) -> None:
        from tqdm import tqdm

        self.weights = weights
        self.finished = sum(w for s, w in weights.items() if s in done)
        self.running: dict[str, float] = {}  # name -> start time
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=sum(weights.values()),
            initial=self.finished,
            unit="s",
            desc=desc,
            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
            disable=not enabled,
            dynamic_ncols=True,
            # redrawn 10 times a second on a terminal, once a minute into a log file
            mininterval=0.1 if sys.stderr.isatty() else 60.0,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _target(self) -> float:
        now = time.time()
        with self._lock:
            moving = sum(min(now - t0, 0.95 * self.weights[n]) for n, t0 in self.running.items())
            return self.finished + moving

    def _advance(self) -> None:
        target = self._target()
        if target > self.bar.n:  # never backwards
            self.bar.update(target - self.bar.n)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._advance()

    def start(self, name: str, desc: str | None = None) -> None:
        """Step ``name`` starts now; ``desc`` replaces the bar's description."""
        with self._lock:
            self.running[name] = time.time()
        if desc is not None:
            self.describe(desc)

    def describe(self, desc: str) -> None:
        """Replace the bar's description."""
        self.bar.set_description(desc, refresh=False)

    def finish(self, name: str) -> None:
        """Step ``name`` ended: the bar counts its whole estimate."""
        with self._lock:
            self.running.pop(name, None)
            self.finished += self.weights[name]
        self._advance()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.close()
