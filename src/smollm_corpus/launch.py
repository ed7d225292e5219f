"""The console script's first step: a Ctrl-C while the tool loads (about a second of imports) ends it cleanly too."""

from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from .cli import run
    except BaseException as error:  # noqa: BLE001 - only an interrupt is handled here
        if not interrupted(error):
            raise
        print("error: interrupted before anything was fetched", file=sys.stderr)
        os._exit(130)
    run()


def interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` is a Ctrl-C, or was raised by one.

    Python can wrap the KeyboardInterrupt of an import: on 3.11, one that arrives while a class
    is being made comes out as a RuntimeError ("Error calling __set_name__") caused by it.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
