"""Run a report's steps one by one, saving each as it finishes, and keep the work on Ctrl-C.

A solver interrupted by Ctrl-C may return what it has instead of raising; the
runner notices the interrupt through its own SIGINT handler, does not record
that step as finished (a resumed run redoes it with the same seed), and stops.
Whatever happens, the report is written from the steps that did finish,
marked ``"partial"`` unless every step completed.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from .errors import EXIT_ANALYSIS_ERROR, EXIT_INTERRUPTED, EXIT_OK, UsageError
from .run_state import RunState


class Runner:
    """Runs named steps, skipping those the state already holds, with one progress bar.

    Use as a context manager: inside it Ctrl-C is noticed even when a solver
    swallows the KeyboardInterrupt to return a partial result.
    """

    def __init__(self, state: RunState, total: int, progress: bool):
        self.state = state
        self.interrupted = False
        self._bar = tqdm(total=total, desc="hessop", unit="step", disable=not progress, leave=False)
        self._previous: Any = None

    def __enter__(self) -> "Runner":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._bar.close()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        raise KeyboardInterrupt

    def step(self, name: str, fn: Callable[[], dict]) -> dict:
        """The result of step ``name``: saved from an earlier run, or computed now and saved at once."""
        if not self.state.done(name):
            self._bar.set_postfix_str(name)
            start = time.perf_counter()
            result = fn()
            if self.interrupted:  # the step returned a partial result after Ctrl-C: do not keep it
                raise KeyboardInterrupt
            self.state.finish(name, result, time.perf_counter() - start)
        self._bar.update()
        return self.state.result(name)


def execute(
    state: RunState,
    body: Callable[[Runner], None],
    total: int,
    progress: bool,
    write_report: Callable[[RunState, str, str | None], Path | None],
    debug: bool = False,
) -> tuple[int, str, str | None, BaseException | None]:
    """Run ``body`` and write the report whatever happens.

    Returns
    -------
    (exit_code, status, error, exception)
        ``status`` is ``"complete"``, ``"partial"`` (interrupted) or ``"failed"``;
        ``exception`` is what stopped the run (``None`` when complete).
    """
    status, error, code, failure = "complete", None, EXIT_OK, None
    try:
        with Runner(state, total, progress) as runner:
            body(runner)
    except KeyboardInterrupt as exc:
        status, code, failure = "partial", EXIT_INTERRUPTED, exc
        error = "interrupted; rerun the same command with --resume to continue"
    except UsageError:
        raise
    except Exception as exc:  # an analysis failed: keep what finished and say what broke
        if debug:
            traceback.print_exc()
        status, code, failure = "failed", EXIT_ANALYSIS_ERROR, exc
        error = f"{type(exc).__name__}: {exc}"
    write_report(state, status, error)
    return code, status, error, failure
