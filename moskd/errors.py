"""One exception type for bad input, and the wrapper that turns it into one line on stderr."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class MoskdError(Exception):
    """Bad input or a missing prerequisite: its message names the thing and the fix."""


def cli_entry(prog: str) -> Callable:
    """Decorate a console-script main: MoskdError -> one line on stderr and exit 2, no traceback.

    The wrapped main returns None: console scripts hand main's result to sys.exit, which exits 1
    for anything that is not None or an int, so a stage's summary dict must never reach it.
    """

    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(argv=None):
            try:
                main(argv)
                return None
            except MoskdError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            except KeyboardInterrupt:
                print(f"{prog}: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
                raise SystemExit(130) from None

        return run

    return wrap


_warned: set[str] = set()


def warn(message: str) -> None:
    """One 'warning:' line on stderr for something suspicious but not fatal; each message once per process."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)
