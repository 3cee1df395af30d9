"""Where the samples of a data layer come from: an ImageData list file, or an LMDB or LevelDB of Datum records."""

import os
from pathlib import Path

import lmdb

from caffecam.data.datum import decode_datum, parse_datum
from caffecam.data.images import DEFAULT_MAX_PIXELS
from caffecam.data.transform import read_image
from caffecam.errors import CaffeCamError


def load_list(path, root_folder=""):
    """An ImageData list file -> [(root_folder + path, label)], each line split at its last space (as Caffe)."""
    return [(p, label) for p, label, _ in _parse_list(path, root_folder)]


def _parse_list(path, root_folder=""):
    """[(full path, label, line number)]; blank lines are skipped; every other malformed line is an error."""
    if not os.path.isfile(path):
        raise CaffeCamError(f"{path}: list file not found (relative paths start at the working directory "
                            f"{os.getcwd()}); create it (e.g. make data) or fix image_data_param.source")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CaffeCamError(f"{path}: not a UTF-8 text list file ({e.reason} at byte {e.start})") from None
    items = []
    for no, line in enumerate(lines, 1):
        line = line.rstrip()
        if not line.strip():
            continue
        pos = line.rfind(" ")
        if pos <= 0:
            raise CaffeCamError(f"{path}:{no}: no label: '{line}'; each line is '<image path> <integer label>'")
        text = line[pos + 1:]
        try:
            label = int(text)
        except ValueError:
            raise CaffeCamError(f"{path}:{no}: label '{text}' is not an integer; each line is "
                                "'<image path> <integer label>'") from None
        items.append((root_folder + line[:pos], label, no))
    if not items:
        raise CaffeCamError(f"{path}: list file is empty; it needs lines '<image path> <integer label>'")
    return items


class ImageListSource:
    """The images of an ImageData list file, read (and resized) as Caffe's ImageData layer does."""

    def __init__(self, param, where="ImageData", max_pixels=DEFAULT_MAX_PIXELS):
        if (param.new_height > 0) != (param.new_width > 0):
            raise CaffeCamError(f"{where}: new_height and new_width must both be 0 or both be > 0, got "
                                f"{param.new_height} and {param.new_width}")
        self.path = param.source
        self.entries = _parse_list(param.source, param.root_folder)
        self.is_color, self.new_h, self.new_w = param.is_color, param.new_height, param.new_width
        self.max_pixels = max_pixels
        for p, _, no in self.entries:
            if not os.path.isfile(p):
                raise CaffeCamError(f"{self.path}:{no}: image '{p}' does not exist (root_folder "
                                    f"'{param.root_folder}' + path); fix the path or remove the line")

    def __len__(self):
        return len(self.entries)

    def where(self, i):
        return f"{self.path}:{self.entries[i][2]}"

    def load(self, i, is_color=None):
        p, label, _ = self.entries[i]
        return read_image(p, self.is_color, self.new_h, self.new_w, self.where(i), self.max_pixels), label

    def labels(self):
        """[(label, where)] for every item."""
        return [(label, f"{self.path}:{no}") for _, label, no in self.entries]


_LMDB_ENVS = {}  # (st_dev, st_ino) of data.mdb -> read-only environment, shared by all sources of a process


def _lmdb_env(path):
    """One read-only environment per database file and process: LMDB (and py-lmdb) refuse a second open of the same
    files in one process. A forked worker inherits its parent's table and reuses those handles, which is safe for
    read-only, lock-free environments (no lock table, the memory map is simply inherited)."""
    st = os.stat(Path(path) / "data.mdb")
    key = (st.st_dev, st.st_ino)
    env = _LMDB_ENVS.get(key)
    if env is None:
        env = _LMDB_ENVS[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    return env


class LmdbSource:
    """Datum records of an LMDB in key order, read by index."""

    def __init__(self, path, where="Data", max_pixels=DEFAULT_MAX_PIXELS):
        self.path, self.max_pixels = str(path), max_pixels
        if not (Path(path) / "data.mdb").is_file():
            raise CaffeCamError(f"{where}: LMDB '{path}' not found (no data.mdb; relative paths start at "
                                f"{os.getcwd()}); build it (e.g. prepare_mpii.py --lmdb) or fix data_param.source")
        self._env = None
        with self._open().begin() as txn:
            self.keys = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            raise CaffeCamError(f"{where}: LMDB '{path}' holds no records")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None
        return state

    def _open(self):
        if self._env is None:
            self._env = _lmdb_env(self.path)
        return self._env

    def __len__(self):
        return len(self.keys)

    def where(self, i):
        return f"{self.path}: record {i} (key '{self.keys[i].decode(errors='replace')}')"

    def load(self, i, is_color=True):
        with self._open().begin(buffers=True) as txn:
            value = txn.get(self.keys[i])
            if value is None:
                raise CaffeCamError(f"{self.where(i)}: record vanished; was the LMDB rewritten during training?")
            return decode_datum(value, is_color, self.where(i), self.max_pixels)

    def labels(self):
        out = []
        with self._open().begin(buffers=True) as txn:
            for i, (_, value) in enumerate(txn.cursor()):
                out.append((parse_datum(value, self.where(i)).label, self.where(i)))
        return out


_LEVELDBS = {}  # real path -> open database: LevelDB locks a database to one handle per process


class LevelDbSource(LmdbSource):
    """Datum records of a LevelDB (data_param.backend LEVELDB, Caffe's default) in key order, through plyvel.

    LevelDB lets one process at a time open a database, so a feed reads it in the main process (no workers).
    """

    def __init__(self, path, where="Data", max_pixels=DEFAULT_MAX_PIXELS):
        self.path, self.max_pixels = str(path), max_pixels
        if not (Path(path) / "CURRENT").is_file():
            raise CaffeCamError(f"{where}: LevelDB '{path}' not found (no CURRENT file; relative paths start at "
                                f"{os.getcwd()}); fix data_param.source, or set `backend: LMDB` for an LMDB")
        self._env = None
        self.keys = list(self._open().iterator(include_value=False))
        if not self.keys:
            raise CaffeCamError(f"{where}: LevelDB '{path}' holds no records")

    def _open(self):
        if self._env is None:
            import plyvel

            key = os.path.realpath(self.path)
            if key not in _LEVELDBS:
                try:
                    _LEVELDBS[key] = plyvel.DB(key, create_if_missing=False)
                except plyvel.Error as exc:
                    raise CaffeCamError(f"LevelDB '{self.path}': cannot open ({exc}); is another program using "
                                        "it? Or convert it to LMDB and set `backend: LMDB`") from None
            self._env = _LEVELDBS[key]
        return self._env

    def load(self, i, is_color=True):
        value = self._open().get(self.keys[i])
        if value is None:
            raise CaffeCamError(f"{self.where(i)}: record vanished; was the LevelDB rewritten during training?")
        return decode_datum(value, is_color, self.where(i), self.max_pixels)

    def labels(self):
        return [(parse_datum(self._open().get(k), self.where(i)).label, self.where(i))
                for i, k in enumerate(self.keys)]
