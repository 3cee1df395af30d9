"""The one exception type for user-facing errors; scripts print it as one line and exit 1."""

import functools
import io
import os
import sys
import time

ALIKE_GRACE_S = 5.0  # how long a silenced rank that failed waits for torchrun to stop it (see _fail_alike)
_held_stderr = []  # a torchrun rank's own stderr while rank_zero_speaks() holds back what it writes


class CaffeCamError(Exception):
    """A problem the user can fix (bad file, bad option, missing input). The message is the whole story."""


def net_label(name):
    """How messages name a net: net 'GoogleNet', or "the unnamed net" for a prototxt without a name (SqueezeNet's)."""
    return f"net '{name}'" if name else "the unnamed net"


def rank_zero_speaks():
    """Under torchrun, for the part of a script every process does alike (reading its options and its input list):
    the processes other than each node's first hold back what they write to stderr, so a mistake (argparse's too)
    reads once, not once per process. Ends at ranks_part() or when main_guard's main returns."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") != "1" and not _held_stderr:
        _held_stderr.append(sys.stderr)
        sys.stderr = io.StringIO()


def ranks_part(keep=False):
    """The processes start on their own shares of the work: from here each reports its own errors. `keep` writes
    what was held back after all; else it goes (local rank 0 wrote the same)."""
    if _held_stderr:
        held, sys.stderr = sys.stderr, _held_stderr.pop()
        if keep:
            sys.stderr.write(held.getvalue())


def _fail_alike():
    """A held-back rank failed: local rank 0 fails the same way and says so, and torchrun then stops this process
    (it stops the others when one fails). Should that not happen within ALIKE_GRACE_S, the failure was this rank's
    own, so it says it itself: a message may come twice, never not at all."""
    if _held_stderr:
        time.sleep(ALIKE_GRACE_S)
        ranks_part(keep=True)


def main_guard(func):
    """Decorate a script's main(): a CaffeCamError becomes `error: <message>` on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CaffeCamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            _fail_alike()
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except SystemExit as exc:
            if exc.code not in (None, 0):  # argparse's usage error
                _fail_alike()
            raise
        finally:
            ranks_part(keep=True)  # before the interpreter prints an unexpected exception's traceback

    return wrapper
