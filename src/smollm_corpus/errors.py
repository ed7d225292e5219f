"""The library's exceptions. Each message says what is wrong and what to do next."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path



class SmollmCorpusError(Exception):
    """Base of every error the library raises on purpose."""

    #: exit code the command line uses for this error
    exit_code = 1


class UsageError(SmollmCorpusError):
    """The call itself is wrong (unknown subset, bad template, conflicting options)."""

    exit_code = 2


class SourceError(SmollmCorpusError):
    """The source (Hub repository or local directory) cannot be read."""


class OutputError(SmollmCorpusError):
    """The output folder cannot be written, or holds another run's output."""


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (disk full, permissions) into an OutputError that says what to do."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(
            f"writing {path} failed: {e.strerror}; free some space (or fix permissions), "
            "then run the same command again to resume"
        ) from e
