"""The status line of long work (pymc_mixvcov/output/progress.py): silent for short work and when
switched off, shown after the delay otherwise, nested tasks report through the outer line, and no
thread outlives its task."""

from __future__ import annotations

import io
import threading
import time

import pytest
from rich.console import Console

import pymc_mixvcov as pmv
from pymc_mixvcov.output import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def _threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t is not threading.main_thread()]


def test_who_decides(monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    assert progress.enabled(None, io.StringIO()) is False  # not a terminal
    assert progress.enabled(None, _Terminal()) is True
    assert progress.enabled(False, _Terminal()) is False
    assert progress.enabled(True, io.StringIO()) is True
    for off in ("0", "false", "Off", " no "):
        monkeypatch.setenv(progress.ENV_VAR, off)
        assert progress.enabled(None, _Terminal()) is False
        assert progress.enabled(True, _Terminal()) is True  # the argument wins
    monkeypatch.setenv(progress.ENV_VAR, "1")
    assert progress.enabled(None, io.StringIO()) is True


def test_short_work_prints_nothing():
    console, buf = _console()
    before = _threads()
    with progress.task("fitting", progress=True, delay=0.5, console=console):
        time.sleep(0.01)
    assert buf.getvalue() == ""
    assert _threads() == before


def test_long_work_shows_the_line_and_clears_it():
    console, buf = _console()
    before = _threads()
    with progress.task("fitting (ML)", detail="reading the model", progress=True, delay=0.05, console=console) as t:
        time.sleep(0.3)
        progress.update("optimising: evaluation 3")
        time.sleep(0.3)
        assert t.detail == "optimising: evaluation 3"
    shown = buf.getvalue()
    assert "fitting (ML)" in shown and "reading the model" in shown and "optimising: evaluation 3" in shown
    assert shown.endswith("\x1b[2K")  # transient: the line is erased at the end
    assert _threads() == before


def test_switched_off_shows_nothing(monkeypatch):
    console, buf = _console()
    with progress.task("fitting", progress=False, delay=0.0, console=console):
        time.sleep(0.2)
    monkeypatch.setenv(progress.ENV_VAR, "0")
    with progress.task("fitting", delay=0.0, console=console):
        time.sleep(0.2)
    assert buf.getvalue() == ""


def test_plain_lines_on_other_streams():
    stream = io.StringIO()
    with progress.task("bootstrap", total=4, progress=True, delay=0.0, stream=stream) as t:
        time.sleep(0.1)
        t.advance()
    assert stream.getvalue().splitlines()[0].startswith("bootstrap · 0/4")


def test_nested_tasks_report_through_the_outer_line():
    console, _ = _console()
    with progress.task("bootstrap", total=2, progress=False, console=console) as outer:
        with progress.task("fitting", detail="reading the model") as inner:
            assert outer.detail == "reading the model"
            with progress.stage("building graphs"):
                assert outer.detail == "building graphs" and inner.detail == "building graphs"
            progress.update("optimising: evaluation 1")
            assert outer.detail == "optimising: evaluation 1"
        assert outer.detail == ""
        outer.advance()
        assert outer.completed == 1
    progress.update("nothing is running")  # no task: nothing happens
    with progress.stage("nothing either"):
        pass


def test_fit_passes_its_choice_on(sleepstudy, monkeypatch):
    """fit(progress=False) never starts a display, fit(progress=True) does (its line would appear
    after a second); the default follows the environment variable (0 in the test suite)."""
    made = []

    class Recorder:
        def __init__(self, task, delay, console=None, stream=None):
            made.append((task.description, delay))

        def close(self):
            pass

    monkeypatch.setattr(progress, "_Display", Recorder)
    model = pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy)
    model.fit(progress=False)
    model.fit()
    assert made == []
    model.fit(progress=True)
    assert made == [("pymc_mixvcov: fitting (ML)", progress.DELAY)]


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_an_error_inside_the_task_ends_the_line(delay):
    console, _ = _console()
    before = _threads()
    with pytest.raises(ValueError, match="boom"):
        with progress.task("fitting", progress=True, delay=delay, console=console):
            time.sleep(0.1)
            raise ValueError("boom")
    assert _threads() == before
