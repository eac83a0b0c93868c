"""Exceptions with messages meant for the person who launched the run.

Each one says what is wrong and what is allowed, so the CLI can print it as one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlatformError(Exception):
    """Base class: any error the user can fix by changing the spec, a path or the data."""


class ConfigError(PlatformError, ValueError):
    """A config key or value is not allowed."""


class DataRootError(PlatformError, FileNotFoundError):
    """A data set is not where the config says it is."""


class DeterministicError(PlatformError):
    """A failure that a retry from the same checkpoint repeats exactly; a study does not retry it."""


class CheckpointError(PlatformError, FileNotFoundError):
    """A checkpoint is missing or does not fit the model."""


class UnsafeCheckpointError(CheckpointError, DeterministicError):
    """A trial checkpoint needs full unpickling (it could run code); it is refused, not loaded."""


class CheckpointWriteError(PlatformError, OSError):
    """A checkpoint could not be written (the disk is full); the previous one is intact."""


class NonFiniteLossError(DeterministicError, FloatingPointError):
    """A loss term became NaN or infinite; the trial stops instead of training on garbage."""


class TeacherBudgetExceeded(PlatformError, RuntimeError):
    """More teacher calls were made than the configured budget allows."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """Build the standard 'unknown X' error listing what is allowed."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} '{value}'{did_you_mean(str(value), choices)}; allowed: {', '.join(choices)}"
    )
