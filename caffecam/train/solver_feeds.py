"""The solver's data: the default feed factory (caffecam.data.feeds' BatchFeeds), the checks of what the feeds give
the nets, and the per-iteration seed that makes dropout and the data stream a function of (seed, rank, iteration)."""

from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2


def data_feeds(workers=2, prefetch=4, max_pixels=None, pin_memory=False, channels_last=False):
    """The default feed factory: caffecam.data.feeds' BatchFeeds of the net's Data/ImageData layers (images over
    max_pixels refused; None: the data package's default; pinned batches for a CUDA device only: pinning creates a
    CUDA context; channels_last: image batches made in that memory by the loader's workers)."""

    def factory(net_param, state, seed, rank, world_size, start_batch):
        from caffecam.data.feeds import make_feeds

        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        return make_feeds(net_param, state.phase, level=state.level, stages=tuple(state.stage), seed=seed, rank=rank,
                          world_size=world_size, workers=workers, prefetch=prefetch, start_batch=start_batch,
                          pin_memory=pin_memory, channels_last=channels_last, **limit)

    return factory


def iteration_seed(seed, rank, it):
    """A 64-bit seed mixed from (seed, rank, iteration) with splitmix64 steps."""
    x = 0
    for v in (seed, rank, it):
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


def feed_shapes(feeds):
    """{top: shape} over the feeds, the input shapes a net is set up at."""
    shapes = {}
    for f in feeds:
        shapes.update(f.shapes)
    return shapes


def check_fed(where, net, feeds):
    """Every input blob of a net to train comes from a feed."""
    fed = {t for f in feeds for t in f.top_names}
    missing = [b for b in net.input_blobs if b not in fed]
    if missing:
        phase = caffe_pb2.Phase.Name(net.phase)
        raise CaffeCamError(f"{where}: {net_label(net.name)} ({phase}) has no Data/ImageData layer feeding "
                            f"'{missing[0]}'; a net to train needs data layers (Input layers are for deploy)")


def check_labels(nets_and_feeds):
    """Every label of every data layer within [0, num_output) of the SoftmaxWithLoss it feeds (one-line error
    naming the list file line or LMDB record otherwise)."""
    from caffecam.data.feeds import BatchFeed
    from caffecam.data.feeds import check_labels as check_feed_labels

    for net, feeds in nets_and_feeds:
        for feed in feeds:
            if not isinstance(feed, BatchFeed) or len(feed.top_names) < 2:
                continue
            for lp in net.consumers(feed.top_names[1]):
                if lp.type == "SoftmaxWithLoss" and len(lp.bottom) == 2 and lp.bottom[1] == feed.top_names[1]:
                    shape = net.blob_shapes[lp.bottom[0]]
                    check_feed_labels(feed, int(shape[1]) if len(shape) > 1 else 1)
                    break
