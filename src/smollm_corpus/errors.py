"""The library's exceptions. Each message says what is wrong and what to do next."""


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
