"""Progress of long work: one status line that appears only when the work takes long.

Work that can take long (the first build of a new model signature's graphs, quadrature with
many nodes, a large crossed fit, a bootstrap) runs inside :func:`task`. Nothing is shown for
the first :data:`DELAY` seconds; if the work is still running then, a status line appears
on standard error (a spinner, the description, a bar when the number of steps is known, the
current stage and the elapsed time, drawn with `rich <https://rich.readthedocs.io>`_, as PyMC
draws its progress bars) and disappears when the work ends. Short fits therefore print nothing.

Code deep inside the work reports its stage with :func:`update` or :func:`stage`, which cost a
context-variable lookup when no task is running. A task started inside another one shows no
line of its own: its stage becomes the outer task's (a bootstrap's bar shows what the current
refit is doing).

Whether a line may be shown:

* ``progress=False`` (as in ``pmv.fit(..., progress=False)``): never;
* ``progress=True``: yes, on a terminal as a live line (in a notebook as rich's output; on
  another stream as plain lines, one per change of stage, at most every 2 seconds);
* ``progress=None`` (the default): the environment variable :data:`ENV_VAR` decides (``0``,
  ``false``, ``no``, ``off``: never; ``1``, ``true``, ``yes``, ``on``: as ``progress=True``),
  and without it, only when standard error is a terminal. The test suite sets it to ``0``.

The line is drawn by a timer thread of the task, which ends with the task; nothing else in the
process changes (while the line is shown, rich redirects ``sys.stdout`` and ``sys.stderr`` so
that what is printed, warnings included, appears above it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["DELAY", "ENV_VAR", "Task", "enabled", "stage", "task", "update"]

#: Environment variable that switches progress display off (``0``) or on (``1``).
ENV_VAR = "PYMC_MIXVCOV_PROGRESS"

#: Seconds a task runs before its line appears.
DELAY = 1.0

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}

#: Seconds between two plain lines (streams that are not terminals).
_PLAIN_EVERY = 2.0

_current: contextvars.ContextVar[Task | None] = contextvars.ContextVar("pymc_mixvcov_progress", default=None)


def enabled(progress: bool | None = None, stream=None) -> bool:
    """Whether a status line may be shown (see the module docstring for the rules).

    Parameters
    ----------
    progress : bool or None
        The caller's choice; ``None`` defers to :data:`ENV_VAR`, then to whether ``stream``
        (default ``sys.stderr``) is a terminal.
    """
    if progress is not None:
        return bool(progress)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in _OFF:
        return False
    if env in _ON:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Task:
    """The state of one piece of long work, as its status line shows it.

    Attributes
    ----------
    description : str
        What the work is (``"fitting (ML)"``, ``"bootstrap"``).
    detail : str
        Its current stage (``"optimising: evaluation 12"``).
    total, completed : int or None, int
        Steps, when their number is known (a bar is then drawn).
    """

    def __init__(self, description: str, detail: str = "", total: int | None = None):
        self.description = str(description)
        self.detail = str(detail)
        self.total = None if total is None else int(total)
        self.completed = 0
        self.started = time.perf_counter()
        self._parent: Task | None = None
        self._plain = None  # a stream written plain lines to, when not a terminal

    @property
    def elapsed(self) -> float:
        """Seconds since the task began."""
        return time.perf_counter() - self.started

    def update(self, detail: str | None = None, *, advance: int = 0, total: int | None = None) -> None:
        """Set the stage shown, advance the step count, or set the number of steps."""
        if total is not None:
            self.total = int(total)
        if advance:
            self.completed += int(advance)
        if detail is not None:
            self.detail = str(detail)
            if self._parent is not None:
                self._parent.update(self._shown())
        if self._plain is not None:
            self._plain.maybe_write(self)

    def advance(self, steps: int = 1) -> None:
        """One (or ``steps``) more steps done."""
        self.update(advance=steps)

    def _shown(self) -> str:
        """What a nested task shows in its parent's line: its stage, else its description."""
        return self.detail or self.description

    def text(self) -> str:
        """The line as plain text."""
        parts = [self.description]
        if self.total:
            parts.append(f"{self.completed}/{self.total}")
        if self.detail:
            parts.append(self.detail)
        parts.append(f"{self.elapsed:.0f} s")
        return " · ".join(parts)

    def render(self):
        """The line as a rich renderable: spinner, description, bar, stage, elapsed time."""
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table

        row = Table.grid(padding=(0, 1))
        cells = [Spinner("dots", style="cyan"), f"[bold]{_escape(self.description)}[/]"]
        if self.total:
            cells += [
                ProgressBar(total=self.total, completed=self.completed, width=30),
                f"{self.completed}/{self.total}",
            ]
        if self.detail:
            cells.append(_escape(self.detail))
        cells.append(f"[dim]{self.elapsed:.0f} s[/]")
        for _ in cells:
            row.add_column(no_wrap=True)
        row.add_row(*cells)
        return row


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


class _Plain:
    """Plain lines on a stream that is not a terminal: one per change of stage, at most every 2 s."""

    def __init__(self, stream):
        self.stream = stream
        self.last = -float("inf")
        self.shown = None

    def maybe_write(self, task: Task, force: bool = False) -> None:
        now = time.perf_counter()
        key = (task.detail, task.completed)
        if force or (key != self.shown and now - self.last >= _PLAIN_EVERY):
            self.stream.write(task.text() + "\n")
            self.stream.flush()
            self.last, self.shown = now, key


class _Display:
    """Starts the line after ``delay`` seconds (timer thread) and stops it at the end of the task."""

    def __init__(self, task: Task, delay: float, console=None, stream=None):
        self.task = task
        self.console = console
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False
        self.live = None
        self.timer = threading.Timer(max(float(delay), 0.0), self._start)
        self.timer.daemon = True
        self.timer.name = "pymc_mixvcov-progress"
        self.timer.start()

    def _start(self) -> None:
        with self.lock:
            if self.closed:
                return
            from rich.console import Console
            from rich.live import Live

            console = self.console
            if console is None:
                console = Console(file=self.stream, stderr=self.stream is None)
            if not (console.is_terminal or console.is_jupyter):
                self.task._plain = _Plain(console.file)
                self.task._plain.maybe_write(self.task, force=True)
                return
            self.live = Live(console=console, get_renderable=self.task.render, transient=True, refresh_per_second=8)
            self.live.start()

    def close(self) -> None:
        self.timer.cancel()
        with self.lock:
            self.closed = True
            if self.live is not None:
                refresher = getattr(self.live, "_refresh_thread", None)
                self.live.stop()
                self.live = None
                if refresher is not None:  # rich stops its refresh thread without waiting for it
                    refresher.join(timeout=1.0)
            self.task._plain = None
        self.timer.join(timeout=1.0)


@contextlib.contextmanager
def task(
    description: str,
    *,
    detail: str = "",
    total: int | None = None,
    progress: bool | None = None,
    delay: float = DELAY,
    console=None,
    stream=None,
) -> Iterator[Task]:
    """Run the ``with`` block as a task whose status line appears after ``delay`` seconds.

    Parameters
    ----------
    description : str
        What the work is; shown first on the line.
    detail : str
        The first stage shown.
    total : int, optional
        Number of steps (``task.advance()`` after each): draws a bar.
    progress : bool or None
        Whether a line may be shown (:func:`enabled`). Inside another task this is ignored: the
        block reports through the outer task's line.
    delay : float
        Seconds before the line appears (default :data:`DELAY`).
    console : rich.console.Console, optional
        Where to draw (default: a console on ``stream``, standard error).
    stream : file-like, optional
        The stream of the default console.

    Yields
    ------
    Task
        ``update(detail)``, ``advance()``; :func:`update` and :func:`stage` reach it from code
        that does not hold it.
    """
    parent = _current.get()
    current = Task(description, detail, total)
    display = None
    if parent is not None:
        current._parent = parent
        previous = parent.detail
        parent.update(current._shown())
    elif enabled(progress, stream if stream is not None else (console.file if console is not None else None)):
        display = _Display(current, delay, console, stream)
    token = _current.set(current)
    try:
        yield current
    finally:
        _current.reset(token)
        if display is not None:
            display.close()
        if parent is not None:
            parent.update(previous)


def update(detail: str | None = None, *, advance: int = 0, total: int | None = None) -> None:
    """Report to the running task, if there is one (else nothing happens): see :meth:`Task.update`."""
    current = _current.get()
    if current is not None:
        current.update(detail, advance=advance, total=total)


@contextlib.contextmanager
def stage(detail: str) -> Iterator[None]:
    """Show ``detail`` as the running task's stage inside the ``with`` block, then the one before."""
    current = _current.get()
    if current is None:
        yield
        return
    previous = current.detail
    current.update(detail)
    try:
        yield
    finally:
        current.update(previous)
