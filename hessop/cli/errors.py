"""Exit codes of the ``hessop`` command and the error a user can act on."""

from __future__ import annotations

EXIT_OK = 0
"""Every requested analysis finished and the report was written."""
EXIT_ANALYSIS_ERROR = 1
"""An analysis failed while running (a solver or the model raised)."""
EXIT_USAGE = 2
"""Bad command line or bad input: factory path, factory result, checkpoint, options."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C): finished steps are saved, the report is marked partial; ``--resume`` continues."""


class UsageError(Exception):
    """Bad input from the user: the message says what was wrong and what to do (exit code 2)."""

    exit_code = EXIT_USAGE
