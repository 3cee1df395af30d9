"""Caffe's data layers as prefetching batch feeds: ImageData (list file of images) and Data (LMDB or LevelDB of
Datum records); make_feeds also opens the HDF5Data (data/hdf5.py) and WindowData (data/windows.py) feeds.

The stream is a pure function of (seed, phase, batch number): the k-th sample of global batch g is stream position
q = g·batch_size + k (+ rand_skip's offset); position q is item perm_e[q mod n] of epoch e = q div n, where perm_e is
the identity, or with shuffle a permutation seeded by (seed, e); its crop and mirror come from a generator seeded by
(seed, q). So the data is the same for any worker count and after a resume at start_batch. With DDP, rank r of
world_size takes global batch b·world_size + r as its b-th batch (each GPU its own batch, as Caffe's multi-GPU).
"""

import itertools
import signal
import sys
import time

import cv2
import numpy as np
import torch

from caffecam.data.hdf5 import Hdf5Feed
from caffecam.data.images import DEFAULT_MAX_PIXELS
from caffecam.data.sources import ImageListSource, LevelDbSource, LmdbSource
from caffecam.data.transform import TRAIN, check_transform_param, load_mean, output_size, transform
from caffecam.data.windows import WindowFeed
from caffecam.engine.netparam import current_layers, layer_included
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2

DATA_TYPES = ("Data", "ImageData")
OTHER_FEEDS = {"HDF5Data": Hdf5Feed, "WindowData": WindowFeed}  # fed in the main process
_SAMPLE, _EPOCH, _SKIP = 0, 1, 2  # domains of the seeded generators


def _rng(seed, kind, phase, n=0):
    return np.random.default_rng([seed, kind, phase, n])


class _BatchStream(torch.utils.data.Dataset):
    """Batch b of one rank -> {'data': float32 N×C×H×W, 'label': int64 (N,)}; errors come back as {'__error__': msg}
    so that a worker's CaffeCamError reaches the user as one line."""

    def __init__(self, source, tp, phase, batch_size, shuffle, skip, seed, rank, world_size, tops, is_color,
                 channels_last=False):
        self.source, self.tp, self.phase, self.batch_size = source, tp, phase, batch_size
        self.channels_last = channels_last
        self.shuffle, self.skip, self.seed, self.rank, self.world_size = shuffle, skip, seed, rank, world_size
        self.tops, self.is_color = tops, is_color
        self.mean = load_mean(tp)
        self.image_shape = None  # H, W, C every image must have when there is no crop
        self._perms = {}

    def __getstate__(self):  # for spawn-started workers: generated protobuf classes do not pickle
        state = dict(self.__dict__)
        state["tp"] = self.tp.SerializeToString()
        return state

    def __setstate__(self, state):
        state["tp"] = caffe_pb2.TransformationParameter.FromString(state["tp"])
        self.__dict__.update(state)

    def item_index(self, q):
        """Index into the source of stream position q."""
        epoch, j = divmod(q + self.skip, len(self.source))
        if not self.shuffle:
            return j
        perm = self._perms.get(epoch)
        if perm is None:
            perm = _rng(self.seed, _EPOCH, self.phase, epoch).permutation(len(self.source))
            self._perms = {epoch - 1: self._perms.get(epoch - 1), epoch: perm}
        return int(perm[j])

    def sample(self, q):
        """(float32 C×H×W, or H×W×C for channels_last batches, label) at stream position q."""
        i = self.item_index(q)
        img, label = self.source.load(i, self.is_color)
        where = self.source.where(i)
        if not self.tp.crop_size and self.image_shape is not None and img.shape != self.image_shape:
            h, w, c = self.image_shape
            raise CaffeCamError(f"{where}: image is {img.shape[1]}x{img.shape[0]}x{img.shape[2]} but the first one "
                                f"was {w}x{h}x{c} (WxHxC); a batch needs one size: set new_height/new_width or "
                                "crop_size")
        random = self.tp.mirror or (self.tp.crop_size and self.phase == TRAIN)
        rng = _rng(self.seed, _SAMPLE, self.phase, q) if random else None
        return transform(img, self.tp, self.phase, rng, self.mean, where=where, hwc=self.channels_last), label

    def __getitem__(self, b):
        try:
            g = b * self.world_size + self.rank
            batch, data, labels = None, None, np.empty(self.batch_size, np.int64)
            for k in range(self.batch_size):
                x, labels[k] = self.sample(g * self.batch_size + k)
                if data is None:
                    batch = torch.empty((self.batch_size,) + x.shape, dtype=torch.float32)
                    if torch.utils.data.get_worker_info() is not None:
                        batch.share_memory_()  # filled in place: no copy when it is sent to the main process
                    data = batch.numpy()
                elif x.shape != data.shape[1:]:
                    chw = (lambda s: (s[2], s[0], s[1])) if self.channels_last else tuple
                    raise CaffeCamError(f"{self.source.where(self.item_index(g * self.batch_size + k))}: image "
                                        f"gives a {chw(x.shape)} blob, the batch holds {chw(data.shape[1:])}; resize "
                                        "the images")
                data[k] = x
        except CaffeCamError as e:
            return {"__error__": str(e)}
        # channels_last: the N×H×W×C buffer seen as N×C×H×W (the tensor's strides travel with it between processes)
        out = {self.tops[0]: batch.permute(0, 3, 1, 2) if self.channels_last else batch}
        if len(self.tops) > 1:
            out[self.tops[1]] = torch.from_numpy(labels)
        return out

    def __len__(self):
        return sys.maxsize


class _Counter(torch.utils.data.Sampler):
    def __init__(self, start):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


def _ignore_sigint(_worker_id):
    # Ctrl-C goes to the whole process group: the main process snapshots and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchFeed:
    """One Data/ImageData layer of a net as an endless stream of batches, loaded by `workers` processes.

    next() -> {top[0]: float32 N×C×H×W, top[1]: int64 (N,)}. `prefetch`: batches in flight in all (Caffe's
    data_param.prefetch), at least one per worker. `start_batch`: resume after that many batches of this rank.
    `seed` None or negative: a random seed (the run is then not reproducible). `max_pixels`: larger images are
    refused from their header, before decoding. `pin_memory`: page-locked batches, for a copy to a CUDA device.
    `channels_last`: image batches in that memory (the workers write N×H×W×C; no transpose in the main process).
    """

    def __init__(self, lp, phase, seed=0, rank=0, world_size=1, workers=2, prefetch=4, start_batch=0,
                 pin_memory=False, max_pixels=DEFAULT_MAX_PIXELS, channels_last=False):
        where = f"layer '{lp.name}' ({lp.type})"
        if lp.type == "ImageData":
            p = lp.image_data_param
            source, shuffle, is_color = ImageListSource(p, where, max_pixels), p.shuffle, p.is_color
        elif lp.type == "Data":
            p = lp.data_param
            if p.backend == caffe_pb2.DataParameter.LMDB:
                source = LmdbSource(p.source, where, max_pixels)
            else:  # LEVELDB, Caffe's default when backend is unset
                source, workers = LevelDbSource(p.source, where, max_pixels), 0
            shuffle, is_color = False, not lp.transform_param.force_gray
        else:
            raise CaffeCamError(f"{where}: not a data layer BatchFeed loads (Data, ImageData)")
        if len(lp.top) not in (1, 2):
            raise CaffeCamError(f"{where}: has {len(lp.top)} tops; a data layer has 'data' and optionally 'label'")
        if p.batch_size <= 0:
            raise CaffeCamError(f"{where}: batch_size must be > 0, got {p.batch_size}")
        if p.batch_size > len(source):
            raise CaffeCamError(f"{where}: batch_size {p.batch_size} is larger than the data set ({len(source)} "
                                f"items in {p.source}); lower batch_size or add data")
        if not 0 <= rank < world_size:
            raise CaffeCamError(f"{where}: rank {rank} outside world size {world_size}")
        if seed is None or seed < 0:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        self.name, self.where, self.phase, self.seed = lp.name, where, phase, seed
        self.top_names, self.batch_size, self.source = list(lp.top), p.batch_size, source
        self.num_items = len(source)
        self.rank, self.world_size = rank, world_size
        # Caffe's rand_skip: skip a random count in [0, rand_skip) of items at the start.
        skip = int(_rng(seed, _SKIP, phase).integers(p.rand_skip)) if p.rand_skip else 0
        self._stream = _BatchStream(source, lp.transform_param, phase, p.batch_size, shuffle, skip, seed, rank,
                                    world_size, self.top_names, is_color, channels_last)
        img, _ = source.load(0, is_color)
        check_transform_param(lp.transform_param, img.shape[2], where)
        self._stream.image_shape = img.shape
        h, w = output_size(lp.transform_param, img.shape[0], img.shape[1])
        self.shapes = {self.top_names[0]: (p.batch_size, img.shape[2], h, w)}
        if len(self.top_names) > 1:
            self.shapes[self.top_names[1]] = (p.batch_size,)
        self.batches_done = start_batch
        self.workers, self.prefetch = workers, prefetch
        self.pin_memory = pin_memory  # for a CUDA device only: pinning creates a CUDA context (on GPU 0 if unset)
        self._iter = None

    def _start(self):
        if self.workers <= 0:
            self._iter = iter(range(self.batches_done, sys.maxsize))
            return
        loader = torch.utils.data.DataLoader(
            self._stream, batch_size=None, sampler=_Counter(self.batches_done), num_workers=self.workers,
            pin_memory=self.pin_memory, persistent_workers=True,
            prefetch_factor=max(1, -(-self.prefetch // self.workers)),
            # Own generator: starting workers must not draw from torch's global RNG (dropout, fillers use it).
            generator=torch.Generator().manual_seed(0), worker_init_fn=_ignore_sigint,
            multiprocessing_context="fork" if sys.platform.startswith("linux") else None)
        # Workers decode with one OpenCV thread each. Set it in the parent around the fork: calling
        # cv2.setNumThreads in a forked child can hang on the parent's thread-pool state.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self._iter = iter(loader)
        finally:
            cv2.setNumThreads(threads)

    def next(self):
        if self._iter is None:
            self._start()
        batch = next(self._iter)
        if self.workers <= 0:
            batch = self._stream[batch]
            if self.pin_memory and "__error__" not in batch:
                batch = {k: v.pin_memory() for k, v in batch.items()}
        if "__error__" in batch:
            self.close()
            raise CaffeCamError(batch["__error__"])
        self.batches_done += 1
        return batch

    __next__ = next

    def __iter__(self):
        return self

    def close(self):
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def make_feeds(net_param_or_net, phase, level=0, stages=(), **kw):
    """A feed for each Data/ImageData (BatchFeed), HDF5Data and WindowData layer included in `phase` (and
    level/stages) of a NetParameter, or of a built Net (its own filtering then applies). kw go to the feeds; a second
    data layer gets seed + 1, and so on. DummyData and MemoryData make their tops inside the net.
    """
    if isinstance(net_param_or_net, caffe_pb2.NetParameter):
        state = caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))
        lps = [lp for lp in current_layers(net_param_or_net) if layer_included(lp, state)]
    else:
        lps = list(net_param_or_net.layer_params)
    feeds = []
    for lp in lps:
        if lp.type in DATA_TYPES or lp.type in OTHER_FEEDS:
            args = dict(kw)
            if args.get("seed") is not None and args["seed"] >= 0:
                args["seed"] += len(feeds)
            feeds.append(OTHER_FEEDS.get(lp.type, BatchFeed)(lp, phase, **args))
    return feeds


def check_labels(feed_or_items, num_classes):
    """Raise CaffeCamError at the first label outside [0, num_classes) (the classifier's num_output).

    Accepts a BatchFeed (list file or LMDB, whose records are all read) or load_list's [(path, label)].
    """
    if isinstance(feed_or_items, BatchFeed):
        if len(feed_or_items.top_names) < 2:
            return
        labelled = feed_or_items.source.labels()
    else:
        labelled = [(label, f"item {i} ('{p}')") for i, (p, label) in enumerate(feed_or_items)]
    for label, where in labelled:
        if not 0 <= label < num_classes:
            raise CaffeCamError(f"{where}: label {label} is outside [0, {num_classes}) — the classifier has "
                                f"num_output {num_classes}; fix the label or the classifier's num_output")


def loader_throughput(feed, n_batches):
    """Images per second the feed delivers over n_batches (after one warm-up batch that starts the workers)."""
    feed.next()
    start = time.perf_counter()
    for _ in range(n_batches):
        feed.next()
    return n_batches * feed.batch_size / (time.perf_counter() - start)
