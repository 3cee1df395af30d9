"""The one exception type for user-facing errors; scripts print it as one line and exit 1."""

import functools
import sys


class CaffeCamError(Exception):
    """A problem the user can fix (bad file, bad option, missing input). The message is the whole story."""


def main_guard(func):
    """Decorate a script's main(): a CaffeCamError becomes `error: <message>` on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CaffeCamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
