"""One training run per snapshot prefix: `<prefix>.lock` names the host and pid of the run that writes
`<prefix>_iter_N.*` and appends to the log beside them, and a second run on the same prefix is refused.

The owner holds an flock on the file for as long as it runs, so the kernel releases it however the run ends. A lock
file that nobody holds was left by a run that died (kill -9, power loss): from this host it is taken over with a
warning; from another host it is trusted (that host's run may still be going where locks do not reach, e.g. NFS
mounted without them) and the message says to delete it once that run is over.
"""

import errno
import fcntl
import os
import socket
from pathlib import Path

from caffecam.errors import CaffeCamError


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(fd):
    """(host, pid) written in the lock file, or None when it is empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    fields = os.read(fd, 4096).decode(errors="replace").split()
    if len(fields) == 2 and fields[1].isdigit():
        return fields[0], int(fields[1])
    return None


class PrefixLock:
    """`with PrefixLock(prefix, where):` holds `<prefix>.lock`; raises CaffeCamError (one line) when another run does.

    `stale`: (host, pid) of a dead run whose lock was taken over, else None.
    """

    def __init__(self, prefix, where="snapshot_prefix"):
        self.prefix, self.path, self.where = prefix, Path(f"{prefix}.lock"), where
        self.host, self.fd, self.stale = socket.gethostname(), None, None

    def _refuse(self, holder):
        who = f"pid {holder[1]} on host {holder[0]}" if holder else "another process"
        raise CaffeCamError(f"{self.where}: another training run ({who}) is using snapshot prefix '{self.prefix}' "
                            f"(lock {self.path}); wait for it to finish, or give this run another snapshot_prefix")

    def _open_locked(self):
        """Open the lock file and flock it; returns (fd, whether flock works here)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flock_works = True
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                self._refuse(holder)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                flock_works = False
            try:  # the owner may have released (deleted) the file between our open and our flock
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd, flock_works
            except FileNotFoundError:
                pass
            os.close(fd)

    def acquire(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, flock_works = self._open_locked()
        except OSError as exc:
            raise CaffeCamError(f"{self.where}: cannot create the lock file {self.path} ({exc.strerror or exc}); "
                                "fix snapshot_prefix or the folder's permissions") from None
        holder = _holder(fd)
        if holder is not None and holder != (self.host, os.getpid()):
            if holder[0] != self.host:
                os.close(fd)
                raise CaffeCamError(f"{self.where}: {self.path} says a training run (pid {holder[1]} on host "
                                    f"{holder[0]}) is using snapshot prefix '{self.prefix}'; if that run has ended, "
                                    "delete the lock file and run again")
            if not flock_works and _pid_running(holder[1]):
                os.close(fd)
                self._refuse(holder)
            self.stale = holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.host} {os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)  # while still holding the flock: a waiting run then retries on a new file
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
