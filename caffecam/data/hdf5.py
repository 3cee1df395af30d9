"""Caffe's HDF5Data layer as a feed: a list file names .h5 files whose datasets are named as the layer's tops.

As Caffe's HDF5DataLayer (hdf5_data_layer.cpp): the list file is read as whitespace-separated paths (relative to
the working directory); top i is the dataset named top[i], read as float32 (integer datasets are converted); every
top of a file has the same number of rows; a batch takes batch_size consecutive rows, moving on to the next file at
the end of one and wrapping around after the last; a top's shape is (batch_size,) + the dataset's other axes; no
transform_param. With shuffle, the file order is shuffled at the start and at each wrap-around, and the rows each
time a file is (re)entered. Caffe draws those orders from its own RNG; here they come from (seed, pass, file), so the
stream is a function of the position alone and a resume at start_batch continues it. Several ranks (DDP) at TRAIN
take the rows in turn, rank r every world_size-th row, as Caffe's multi-GPU Skip(); at TEST every rank reads all.
"""

import os

import numpy as np

from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2


class StreamFeed:
    """What a feed offers the solver and the scripts: next() -> {top: array}, shapes, top_names, batch_size,
    close(), iteration and `with`."""

    def __next__(self):
        return self.next()

    def __iter__(self):
        return self

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_h5_list(path, where):
    """[(h5 path, list line)] of an HDF5Data source list."""
    if not os.path.isfile(path):
        raise CaffeCamError(f"{where}: hdf5_data_param.source '{path}' not found (relative paths start at "
                            f"{os.getcwd()}); it lists one .h5 file per line")
    with open(path, encoding="utf-8", errors="replace") as f:
        files = [(tok, no) for no, line in enumerate(f, 1) for tok in line.split()]
    if not files:
        raise CaffeCamError(f"{path}: lists no HDF5 file; write one .h5 path per line")
    return files


class Hdf5Feed(StreamFeed):
    def __init__(self, lp, phase, seed=0, rank=0, world_size=1, start_batch=0, **_ignored):
        import h5py

        self._h5py = h5py
        where = self.where = f"layer '{lp.name}' (HDF5Data)"
        p = lp.hdf5_data_param
        if lp.HasField("transform_param"):
            raise CaffeCamError(f"{where}: HDF5Data does not transform data (as in Caffe); remove transform_param "
                                "and store the data preprocessed")
        if not lp.top:
            raise CaffeCamError(f"{where}: has no tops; name each top as a dataset of the .h5 files")
        if p.batch_size <= 0:
            raise CaffeCamError(f"{where}: hdf5_data_param.batch_size must be > 0, got {p.batch_size}")
        self.name, self.phase, self.top_names, self.batch_size = lp.name, phase, list(lp.top), p.batch_size
        self.shuffle, self.seed = p.shuffle, 0 if seed is None or seed < 0 else seed
        self.rank, self.world_size = (rank, world_size) if phase == caffe_pb2.TRAIN else (0, 1)
        self.files = read_h5_list(p.source, where)
        self.rows, trailing = [], None
        for path, no in self.files:
            shapes = self._shapes(path, f"{p.source}:{no}")
            if trailing is None:
                trailing = [s[1:] for s in shapes]
            elif [s[1:] for s in shapes] != trailing:
                raise CaffeCamError(f"{p.source}:{no}: {path} has datasets of shape {shapes}; the first file's have "
                                    f"rows of {trailing}: every file needs the same row shapes")
            self.rows.append(shapes[0][0])
        self.total = sum(self.rows)
        if self.total == 0:
            raise CaffeCamError(f"{p.source}: the listed HDF5 files hold no rows")
        self.shapes = {t: (self.batch_size,) + tuple(s) for t, s in zip(self.top_names, trailing)}
        self.batches_done = start_batch
        self._loaded = (None, None, None)  # ((pass, file index), {top: array}, row order)

    def _shapes(self, path, where):
        if not os.path.isfile(path):
            raise CaffeCamError(f"{where}: HDF5 file '{path}' not found")
        try:
            with self._h5py.File(path, "r") as f:
                shapes = []
                for top in self.top_names:
                    d = f.get(top)
                    if not isinstance(d, self._h5py.Dataset):
                        raise CaffeCamError(f"{where}: {path} has no dataset '{top}' (the top's name); it has "
                                            f"{', '.join(sorted(f.keys())) or 'none'}")
                    if d.dtype.kind not in "fiu" or d.ndim < 1:
                        raise CaffeCamError(f"{where}: {path} dataset '{top}' is {d.dtype}, {d.ndim}-D; HDF5Data "
                                            "reads numeric datasets of at least 1 axis")
                    shapes.append(d.shape)
        except OSError as exc:
            raise CaffeCamError(f"{where}: cannot read {path} as HDF5 ({exc})") from None
        if len({s[0] for s in shapes}) != 1:
            raise CaffeCamError(f"{where}: {path} datasets {self.top_names} have different row counts "
                                f"{[s[0] for s in shapes]}")
        return shapes

    def _rng(self, *key):
        return np.random.default_rng([self.seed, *key])

    def _file_order(self, pass_no):
        n = len(self.files)
        return self._rng(pass_no).permutation(n) if self.shuffle else np.arange(n)

    def _file(self, pass_no, f):
        key = (pass_no, f)
        if self._loaded[0] != key:
            path = self.files[f][0]
            with self._h5py.File(path, "r") as h5:
                arrays = {t: np.asarray(h5[t], dtype=np.float32) for t in self.top_names}
            order = self._rng(pass_no, f, 1).permutation(self.rows[f]) if self.shuffle else None
            self._loaded = (key, arrays, order)
        return self._loaded[1], self._loaded[2]

    def row(self, q):
        """{top: row array} at stream position q."""
        pass_no, k = divmod(q, self.total)
        for f in self._file_order(pass_no):
            if k < self.rows[f]:
                arrays, order = self._file(pass_no, int(f))
                r = int(order[k]) if order is not None else k
                return {t: a[r] for t, a in arrays.items()}
            k -= self.rows[f]
        raise AssertionError("unreachable")

    def next(self):
        first = self.batches_done * self.batch_size
        rows = [self.row((first + k) * self.world_size + self.rank) for k in range(self.batch_size)]
        self.batches_done += 1
        return {t: np.stack([r[t] for r in rows]) for t in self.top_names}
