"""Progress of long jobs: a rich bar on a terminal, plain timed lines everywhere else.

One reporter for every loop that can run for minutes (PLM-ICD training and scoring, the TRL stages,
generation, TF-IDF fitting, data preparation, a study's runs). When stderr is a terminal it draws a
rich progress bar (bars opened while another is showing join the same display, so nested jobs never
fight over the screen). When it is not (CI, ``nohup``, a scheduler's log file) it writes one plain
line to stderr, flushed at once, when the job starts, at most every ``interval`` seconds while it runs,
and when it ends::

    [plm_icd fit] start step 0/900
    [plm_icd fit] step 120/900 (13%) epoch 1/3 loss 0.0421 elapsed 2m10s eta 14m05s
    [plm_icd fit] done step 900/900 (100%) epoch 3/3 loss 0.0398 elapsed 16m15s (0.92 step/s)

Environment: ``ICDCODER_PROGRESS`` = ``off`` (silence every reporter), ``plain`` (plain lines even
on a terminal) or ``auto`` (the default); ``ICDCODER_PROGRESS_INTERVAL`` = seconds between plain
lines (default 30; 0 writes a line on every update).

Use::

    with progress("plm_icd fit", total=900) as p:
        for step in ...:
            p.update(loss=running_loss)          # one more step; metrics are remembered
    for batch in track(batches, "plm_icd predict", unit="batch"):
        ...

Only the standard library is imported here; rich is imported when a bar is drawn.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

ENV_MODE = "ICDCODER_PROGRESS"
ENV_INTERVAL = "ICDCODER_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0

T = TypeVar("T")


def progress_mode(stream: TextIO | None = None) -> str:
    """``off``, ``bar`` (stderr, or ``stream``, is a terminal) or ``lines``, after ``ICDCODER_PROGRESS``."""
    env = os.environ.get(ENV_MODE, "").strip().lower()
    if env in ("off", "0", "false", "no", "none"):
        return "off"
    if env in ("plain", "lines", "log"):
        return "lines"
    stream = stream if stream is not None else sys.stderr
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty else "lines"


def progress_interval() -> float:
    """Seconds between plain lines: ``ICDCODER_PROGRESS_INTERVAL`` (>= 0) or 30."""
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``4.2s``, ``42s``, ``2m10s``, ``1h05m``."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


class Progress:
    """One job's progress. Use as a context manager (or call :meth:`start` / :meth:`close`).

    ``total``: how many ``unit``s the job has (None: unknown, no percentage or ETA); ``initial``: how
    many were done before this run (a resumed job; its ETA counts only this run's pace). ``metrics``
    given to :meth:`update` (loss, reward, ...) are remembered and shown until replaced. ``enabled``
    False, or ``ICDCODER_PROGRESS=off``, makes every call a no-op. ``bar=False`` writes the plain lines
    when stderr is not a terminal but draws nothing on one (for an outer loop whose inner jobs draw
    their own bars). ``stream`` (default: ``sys.stderr`` at each write), ``interval`` (default:
    :func:`progress_interval`) and ``clock`` (a monotonic time source) are there for tests.
    """

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "step", initial: int = 0,
                 enabled: bool = True, bar: bool = True, stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.desc, self.unit = desc, unit
        self.total = int(total) if total is not None else None
        self.completed = self._initial = int(initial)
        self.metrics: dict[str, Any] = {}
        self.interval = progress_interval() if interval is None else max(0.0, float(interval))
        self._stream, self._clock = stream, clock
        mode = progress_mode(stream) if enabled else "off"
        self.mode = "off" if (mode == "bar" and not bar) else mode
        self._t0: float | None = None
        self._last = 0.0
        self._task = None
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "Progress":
        if self._t0 is not None:
            return self
        self._t0 = self._last = self._clock()
        if self.mode == "lines":
            self._write(self.line("start"))
        elif self.mode == "bar":
            self._task = _Bars.add(self)
        return self

    def close(self, failed: bool = False) -> None:
        if self._closed or self._t0 is None:
            return
        self._closed = True
        if self.mode == "lines":
            self._write(self.line("stopped" if failed else "done"))
        elif self.mode == "bar" and self._task is not None:
            _Bars.remove(self._task)

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    # ------------------------------------------------------------------ updates
    def update(self, n: int = 1, *, completed: int | None = None, total: int | None = None, **metrics: Any) -> None:
        """``n`` more units done (or exactly ``completed``), optionally a new ``total``, and the latest
        ``metrics`` (None values are ignored)."""
        if self.mode == "off":
            return
        if self._t0 is None:
            self.start()
        if total is not None:
            self.total = int(total)
        self.completed = int(completed) if completed is not None else self.completed + n
        self.metrics.update({k: v for k, v in metrics.items() if v is not None})
        if self.mode == "lines":
            now = self._clock()
            if now - self._last >= self.interval:
                self._last = now
                self._write(self.line())
        elif self._task is not None:
            _Bars.update(self._task, self)

    # ------------------------------------------------------------------ text
    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def eta(self) -> float | None:
        """Seconds left at this run's pace so far; None without a total or before the first unit."""
        done = self.completed - self._initial
        if self.total is None or done <= 0:
            return None
        return max(0, self.total - self.completed) * self.elapsed() / done

    def count_text(self) -> str:
        if self.total:
            pct = int(100 * min(self.completed, self.total) / self.total)
            return f"{self.unit} {self.completed:,}/{self.total:,} ({pct}%)"
        return f"{self.unit} {self.completed:,}" + (f"/{self.total:,}" if self.total is not None else "")

    def metrics_text(self) -> str:
        return " ".join(f"{k} {_fmt_value(v)}" for k, v in self.metrics.items())

    def line(self, event: str | None = None) -> str:
        """``[desc] (event) unit n/total (pct%) metrics elapsed .. eta ..`` (start: no times; end: rate)."""
        parts = [f"[{self.desc}]"] + ([event] if event else [])
        counted = bool(self.total or self.completed)  # a job with no steps to count says only start/done
        if event == "start":
            return " ".join(parts + ([f"{self.unit} {self.completed:,}" + (f"/{self.total:,}" if self.total else "")]
                                     if counted else []))
        if counted:
            parts.append(self.count_text())
        if self.metrics:
            parts.append(self.metrics_text())
        elapsed = self.elapsed()
        parts.append(f"elapsed {format_duration(elapsed)}")
        if event is None:
            eta = self.eta()
            if eta is not None:
                parts.append(f"eta {format_duration(eta)}")
        elif counted and elapsed > 0 and self.completed > self._initial:
            rate = (self.completed - self._initial) / elapsed
            parts.append(f"({rate:,.0f} {self.unit}/s)" if rate >= 100 else f"({rate:.3g} {self.unit}/s)")
        return " ".join(parts)

    def _write(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must never stop a training run
            pass


class _Bars:
    """The one rich display every bar on the terminal shares; it closes when its last bar does (the
    outermost bar stays on screen, bars nested inside it vanish when they finish)."""

    lock = threading.Lock()
    display = None
    users = 0

    @classmethod
    def add(cls, p: Progress):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        with cls.lock:
            if cls.display is None:
                console = Console(file=p._stream) if p._stream is not None else Console(stderr=True)
                cls.display = RichProgress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                           MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                                           TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(),
                                           TimeRemainingColumn(), console=console, transient=False)
                cls.display.start()
            cls.users += 1
            return cls.display.add_task(p.desc, total=p.total, completed=p.completed, unit=p.unit + "s",
                                        metrics=p.metrics_text())

    @classmethod
    def update(cls, task, p: Progress) -> None:
        with cls.lock:
            if cls.display is not None:
                cls.display.update(task, total=p.total, completed=p.completed, metrics=p.metrics_text())

    @classmethod
    def remove(cls, task) -> None:
        with cls.lock:
            if cls.display is None:
                return
            cls.users -= 1
            if cls.users > 0:
                cls.display.remove_task(task)
            else:
                cls.display.stop()
                cls.display, cls.users = None, 0


def progress(desc: str, total: int | None = None, **kw: Any) -> Progress:
    """A :class:`Progress` to use in a ``with`` block; keywords as :class:`Progress`."""
    return Progress(desc, total, **kw)


def track(iterable: Iterable[T], desc: str, total: int | None = None, **kw: Any) -> Iterator[T]:
    """Yield the items of ``iterable``, counting each as one unit (``unit="item"`` unless given);
    ``total`` defaults to ``len(iterable)`` when it has one."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    kw.setdefault("unit", "item")
    with Progress(desc, total, **kw) as p:
        for item in iterable:
            yield item
            p.update()


@contextlib.contextmanager
def hf_bars_off_terminal():
    """Off a terminal (or with ``ICDCODER_PROGRESS=off``), datasets' and transformers' own tqdm bars
    (dataset preparation, checkpoint writing) are switched off while a stage is built and trained: in a
    log file each is a run of ``\\r`` updates. Restored afterwards; on a terminal nothing changes."""
    if progress_mode() == "bar":
        yield
        return
    from transformers.utils import logging as hf_logging

    try:  # datasets comes with the training extra; loading a model for prediction does not need it
        import datasets
    except ImportError:
        datasets = None
    tf_on = hf_logging.is_progress_bar_enabled()
    ds_on = datasets is not None and not datasets.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if ds_on:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if tf_on:
            hf_logging.enable_progress_bar()
        if ds_on:
            datasets.enable_progress_bars()
