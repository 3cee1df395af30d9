"""Atomic file writes: a reader, or a crash, never sees half a file."""

import os
import tempfile
from pathlib import Path


def current_umask():
    """The process umask, read without changing it where Linux reports it (os.umask can only set it, and setting
    it for a moment would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(directory=False):
    """The mode open() (0666) or mkdir() (0777) would give a new file or folder under the current umask.
    mkstemp and mkdtemp create theirs 0600 and 0700: only their owner could read them on a shared server."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_bytes(path, data):
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, plain_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
