"""The console script's first step: a Ctrl-C while the tool loads (about a second of imports) ends it cleanly too."""

from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from .cli import run
    except KeyboardInterrupt:
        print("error: interrupted before anything was fetched", file=sys.stderr)
        os._exit(130)
    run()
