"""MPII Human Pose activity labels -> Caffe ImageData lists (and optionally Caffe LMDBs).

The annotation file holds one struct `RELEASE`; per image `annolist(i).image.name`, `annolist(i).vididx` (1-based
video index), `img_train(i)` (1 = train) and `act(i)` with `cat_name`, `act_name`, `act_id` (-1 = unlabelled).
scipy's squeeze_me turns one-element arrays into scalars and leaves empty fields as empty arrays; the `_one`,
`_text` and `_items` helpers below undo both so every field reads the same way.

Outputs (in `out`): class_labels.csv (`id name`), train.txt and val.txt (`relpath label`, relative to the images
folder, which becomes the ImageData root_folder) and, with LMDB, train_lmdb/ and val_lmdb/ (Datum records keyed
`%08d_<relpath>` in list order, each image resized once to S×S and JPEG-encoded). train.txt is shuffled (seeded)
because Caffe's Data layer reads an LMDB in key order; val.txt is sorted.
"""

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from caffecam.atomic import atomic_write_bytes
from caffecam.data.datum import encode_datum, lmdb_key, write_lmdb
from caffecam.data.transform import read_image
from caffecam.errors import CaffeCamError
from caffecam.textfile import content_lines

SKIP_TEST = "test image (img_train != 1)"
SKIP_UNLABELLED = "no activity label (act_id == -1)"
SKIP_MISSING = "image file missing"
SKIP_NO_NAME = "no image name in annolist"
SKIP_NOT_IN_CLASSES = "category not among the chosen classes"


@dataclass(frozen=True)
class Image:
    relpath: str
    category: str
    activity: str
    group: str  # video key: frames of one video stay on one side of the split


def _items(x):
    """A struct array, a lone struct (squeezed one-element array) or an empty field -> a list."""
    if isinstance(x, np.ndarray):
        return list(x.ravel())
    if x is None:
        return []
    return [x]


def _one(x):
    """A squeezed scalar, a one-element array or an empty array -> Python scalar or None."""
    if isinstance(x, np.ndarray):
        if x.size == 0:
            return None
        if x.size != 1:
            raise ValueError(f"expected one value, got {x.size}")
        x = x.ravel()[0]
    return x.item() if isinstance(x, np.generic) else x


def _text(x):
    x = _one(x)
    return "" if x is None else str(x).strip()


def load_release(path):
    """Read the MPII .mat and return its RELEASE struct, with one-line errors for wrong files."""
    path = Path(path)
    if not path.is_file():
        raise CaffeCamError(f"{path}: annotation file not found; get it with `make mpii` "
                            f"(mpii_human_pose_v1_u12_2/mpii_human_pose_v1_u12_1.mat)")
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except NotImplementedError:
        raise CaffeCamError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it as v7 or earlier") from None
    except Exception as exc:  # scipy raises several types for non-.mat input
        raise CaffeCamError(f"{path}: not a readable MATLAB .mat file ({exc.__class__.__name__}: {exc})") from None
    release = mat.get("RELEASE")
    if release is None or not all(hasattr(release, f) for f in ("annolist", "img_train", "act")):
        raise CaffeCamError(f"{path}: no RELEASE struct with annolist/img_train/act; is this the MPII annotation file?")
    return release


def collect_images(release, images_dir, where="RELEASE"):
    """Training images with an activity label whose file exists -> (list of Image, Counter of skip reasons)."""
    annolist, acts = _items(release.annolist), _items(release.act)
    train = [_one(t) for t in _items(release.img_train)]
    if not (len(annolist) == len(acts) == len(train)):
        raise CaffeCamError(f"{where}: annolist ({len(annolist)}), act ({len(acts)}) and img_train ({len(train)}) "
                            f"differ in length; the annotation file is damaged")
    images_dir = Path(images_dir)
    kept, skipped = [], Counter()
    for i, (anno, act, is_train) in enumerate(zip(annolist, acts, train)):
        if is_train is None or int(is_train) != 1:
            skipped[SKIP_TEST] += 1
            continue
        act_id = _one(getattr(act, "act_id", None))
        category = _text(getattr(act, "cat_name", None))
        if act_id is None or int(act_id) == -1 or not category:
            skipped[SKIP_UNLABELLED] += 1
            continue
        image = getattr(anno, "image", None)
        name = _text(getattr(image, "name", None)) if image is not None else ""
        if not name:
            skipped[SKIP_NO_NAME] += 1
            continue
        if not (images_dir / name).is_file():
            skipped[SKIP_MISSING] += 1
            continue
        vid = _one(getattr(anno, "vididx", None))
        group = f"video {int(vid)}" if vid is not None else f"image {i}"
        kept.append(Image(name, category, _text(getattr(act, "act_name", None)), group))
    return kept, skipped


def label_name(category):
    return category.replace(" ", "_")


def read_class_list(path, known):
    """Class names, one a line (`name` or `id name`; underscores or spaces) -> {category: id}."""
    by_label = {label_name(c): c for c in known}
    names, ids = [], []
    for n, line in content_lines(path):
        head, _, rest = line.partition(" ")
        if head.isdigit() and rest.strip():
            ids.append(int(head))
            line = rest.strip()
        cat = by_label.get(label_name(line))
        if cat is None:
            raise CaffeCamError(f"{path}:{n}: unknown category {line!r}; known (with images): "
                                f"{', '.join(sorted(by_label))}")
        if cat in names:
            raise CaffeCamError(f"{path}:{n}: category {line!r} listed twice")
        names.append(cat)
    if not names:
        raise CaffeCamError(f"{path}: no class names in the file")
    if ids:
        if len(ids) != len(names) or sorted(ids) != list(range(len(names))):
            raise CaffeCamError(f"{path}: ids must be given on every line and be 0..{len(names) - 1}, each once")
        return dict(zip(names, ids))
    return {c: i for i, c in enumerate(sorted(names))}


def choose_classes(images, n_classes=14):
    """The n most frequent categories (ties by name), numbered in alphabetical order -> {category: id}."""
    counts = Counter(im.category for im in images)
    if n_classes < 1:
        raise CaffeCamError(f"--classes must be at least 1, got {n_classes}")
    if n_classes > len(counts):
        raise CaffeCamError(f"--classes {n_classes} asks for more categories than the {len(counts)} that have "
                            f"usable images; use --classes {len(counts)} or fewer")
    top = sorted(counts, key=lambda c: (-counts[c], c))[:n_classes]
    return {c: i for i, c in enumerate(sorted(top))}


def split_by_video(items, val_fraction=0.1, seed=0):
    """items: (relpath, label, group) -> (train, val) lists of (relpath, label), and warnings.

    Each video (group) goes wholly to one side; its class is its most common label. Per class, the videos are
    shuffled with a seed derived from (seed, label) and moved to val while the class's val count is below
    round(val_fraction * count) and the move does not take it further from that target. At least one video
    per class stays in train.
    """
    if not 0 <= val_fraction < 1:
        raise CaffeCamError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    groups = defaultdict(list)
    for relpath, label, group in items:
        groups[group].append((relpath, label))
    by_class = defaultdict(list)
    for group, members in groups.items():
        votes = Counter(lbl for _, lbl in members)
        by_class[min(votes, key=lambda lbl: (-votes[lbl], lbl))].append(group)
    val_groups, warnings = set(), []
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        total = sum(len(groups[g]) for g in keys)
        target = round(val_fraction * total)
        order = np.random.default_rng([seed, label]).permutation(len(keys))
        n_val, n_val_groups = 0, 0
        for j in order:
            size = len(groups[keys[j]])
            closer = abs(n_val + size - target) <= abs(n_val - target)
            if n_val < target and n_val_groups + 1 < len(keys) and closer:
                val_groups.add(keys[j])
                n_val += size
                n_val_groups += 1
        if val_fraction > 0 and n_val == 0:
            warnings.append((label, len(keys), total))
    train, val = [], []
    for group in sorted(groups):
        (val if group in val_groups else train).extend(groups[group])
    rng = np.random.default_rng(seed)
    train = [train[i] for i in rng.permutation(len(train))]
    return train, sorted(val), warnings


def _load_resized(images_dir, relpath, size):
    """The image as the LMDB stores it, read with the list readers' guards (a decompression bomb is refused from its
    header, before decoding)."""
    path = Path(images_dir) / relpath
    again = "and run again (a missing image is skipped)"
    return read_image(path, True, size, size, where="prepare_mpii", fix=f"delete or replace it {again}",
                      drop=f"delete it {again}")


def write_image_lmdb(path, images_dir, entries, size=256, workers=None, quality=95, progress=True):
    """entries: (relpath, label) in list order -> LMDB of encoded Datum records; returns the count."""
    workers = workers or os.cpu_count() or 1

    def encode(entry):
        relpath, label = entry
        return encode_datum(_load_resized(images_dir, relpath, size), label, encoded=True, quality=quality)

    def records():
        with ThreadPoolExecutor(workers) as pool:  # cv2 releases the GIL while decoding and resizing
            for start in range(0, len(entries), 256):
                chunk = entries[start:start + 256]
                for k, (entry, rec) in enumerate(zip(chunk, pool.map(encode, chunk))):
                    yield lmdb_key(start + k, entry[0]), rec

    return write_lmdb(path, records(), total=len(entries), desc=Path(path).name, progress=progress)


def _lines(rows):
    return "".join(f"{a} {b}\n" for a, b in rows).encode()


def prepare(annotations, images_dir, out="data", n_classes=14, class_list=None, val_fraction=0.1, seed=0,
            lmdb=False, resize=256, workers=None, progress=True, log=print):
    """The whole job behind scripts/prepare_mpii.py; returns a dict of output paths, class ids and counts."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise CaffeCamError(f"{images_dir}: images folder not found; get the images with `make mpii`")
    release = load_release(annotations)
    images, skipped = collect_images(release, images_dir, str(annotations))
    if not images:
        raise CaffeCamError(f"{annotations}: no usable images (labelled training images whose file exists in "
                            f"{images_dir}); skipped: {dict(skipped)}")
    classes = read_class_list(class_list, {im.category for im in images}) if class_list else \
        choose_classes(images, n_classes)
    items = []
    for im in images:
        if im.category in classes:
            items.append((im.relpath, classes[im.category], im.group))
        else:
            skipped[SKIP_NOT_IN_CLASSES] += 1
    train, val, warnings = split_by_video(items, val_fraction, seed)

    out = Path(out)
    by_id = sorted(classes.items(), key=lambda kv: kv[1])
    atomic_write_bytes(out / "class_labels.csv", _lines((i, label_name(c)) for c, i in by_id))
    atomic_write_bytes(out / "train.txt", _lines(train))
    atomic_write_bytes(out / "val.txt", _lines(val))

    n_annotated = len(_items(release.annolist))
    log(f"kept {len(items)} of {n_annotated} annotated images, in {len(classes)} classes")
    for reason, n in sorted(skipped.items()):
        log(f"  skipped {n:6d}: {reason}")
    n_train, n_val = Counter(lbl for _, lbl in train), Counter(lbl for _, lbl in val)
    width = max(len(label_name(c)) for c in classes)
    log(f"{'id':>3} {'class':<{width}} {'train':>6} {'val':>5} {'total':>6}")
    for c, i in by_id:
        log(f"{i:>3} {label_name(c):<{width}} {n_train[i]:>6} {n_val[i]:>5} {n_train[i] + n_val[i]:>6}")
    log(f"{'':>3} {'all':<{width}} {len(train):>6} {len(val):>5} {len(train) + len(val):>6}")
    for label, n_videos, total in warnings:
        log(f"warning: class {label} ({label_name(by_id[label][0])}) has {total} images in {n_videos} video(s): "
            f"too few to hold any out, so it has no validation images")

    result = {"class_labels": out / "class_labels.csv", "train": out / "train.txt", "val": out / "val.txt",
              "classes": classes, "n_train": len(train), "n_val": len(val), "skipped": dict(skipped)}
    if lmdb:
        for name, rows in (("train_lmdb", train), ("val_lmdb", val)):
            write_image_lmdb(out / name, images_dir, rows, resize, workers, progress=progress)
            result[name] = out / name
            log(f"wrote {out / name} ({len(rows)} records, {resize}x{resize} JPEG)")
    return result
