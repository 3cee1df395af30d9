"""A synthetic classification set whose class is decided by one small object: what CAM should find.

Each image has a cluttered, low-saturation background (smooth colour noise, grey lines and blobs) and exactly one
class object: a shape with its own saturated colour or texture, at a random position and scale (15-35% of the
side by default). Background and distractors never use saturated colours, so nothing but the object tells the
class, and the ground-truth box is the object's tight pixel box.

Files written under `out` (which becomes the ImageData root_folder):
  images/NNNNN.jpg    the images (JPEG)
  train.txt, val.txt  `images/NNNNN.jpg label` (ImageData format), val stratified per class
  class_labels.csv    `id name` per line
  boxes.csv           `images/NNNNN.jpg x1 y1 x2 y2` per image, pixels, x1 <= x < x2 and y1 <= y < y2
                      (x2, y2 exclusive: width = x2 - x1)
Every image is drawn from its own generator seeded with (seed, index), so a set is the same on every run.
"""

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError


def _poly(points):
    return np.asarray(points, np.float64)


def _regular(n, inner=None, phase=-np.pi / 2):
    k = 2 * n if inner else n
    ang = phase + np.arange(k) * 2 * np.pi / k
    rad = np.ones(k) if not inner else np.where(np.arange(k) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


PLUS = _poly([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1), (-.3, .3), (-1, .3),
              (-1, -.3), (-.3, -.3)])
# (name, shape, fill): shapes are polygons in [-1, 1]^2 or the names of special drawings below; a fill is a BGR
# colour or (texture, colour 1, colour 2). All colours are saturated (max - min channel >= 150).
CLASSES = [
    ("red_circle", "circle", (0, 0, 230)),
    ("green_square", _poly([(-.85, -.85), (.85, -.85), (.85, .85), (-.85, .85)]), (0, 200, 0)),
    ("blue_triangle", _poly([(0, -1), (.95, .8), (-.95, .8)]), (230, 60, 0)),
    ("yellow_plus", PLUS, (0, 230, 230)),
    ("magenta_ring", "ring", (230, 0, 230)),
    ("cyan_star", _regular(5, inner=0.42), (230, 230, 0)),
    ("orange_diamond", _poly([(0, -1), (.7, 0), (0, 1), (-.7, 0)]), (0, 140, 255)),
    ("striped_square", "patch", ("stripes", (0, 0, 255), (255, 200, 0))),
    ("purple_x", PLUS @ np.array([[np.cos(np.pi / 4), -np.sin(np.pi / 4)], [np.sin(np.pi / 4), np.cos(np.pi / 4)]]),
     (200, 0, 120)),
    ("lime_hexagon", _regular(6, phase=0), (0, 255, 150)),
    ("pink_crescent", "crescent", (180, 90, 255)),
    ("checker_square", "patch", ("checker", (0, 255, 255), (255, 0, 160))),
    ("teal_arrow", _poly([(-1, -.3), (.1, -.3), (.1, -.8), (1, 0), (.1, .8), (.1, .3), (-1, .3)]), (160, 160, 0)),
    ("brown_tee", .85 * _poly([(-1, -1), (1, -1), (1, -.45), (.28, -.45), (.28, 1), (-.28, 1), (-.28, -.45),
                               (-1, -.45)]), (0, 70, 170)),
    ("violet_halfdisc", "halfdisc", (255, 60, 140)),
    ("gold_frame", "frame", (0, 190, 255)),
]
MAX_CLASSES = len(CLASSES)


def _draw_shape(mask, shape, cx, cy, r, angle):
    """Fill `mask` (uint8) with one shape of half-size r centred at (cx, cy)."""
    if isinstance(shape, np.ndarray):
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = (shape @ rot.T) * r + (cx, cy)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    elif shape == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(r), 255, -1)
    elif shape == "ring":
        cv2.circle(mask, (round(cx), round(cy)), round(r), 255, -1)
        cv2.circle(mask, (round(cx), round(cy)), round(r * 0.55), 0, -1)
    elif shape == "crescent":
        cv2.circle(mask, (round(cx), round(cy)), round(r), 255, -1)
        dx, dy = 0.5 * r * np.cos(angle), 0.5 * r * np.sin(angle)
        cv2.circle(mask, (round(cx + dx), round(cy + dy)), round(r * 0.85), 0, -1)
    elif shape == "halfdisc":
        cv2.ellipse(mask, (round(cx), round(cy)), (round(r), round(r)), np.degrees(angle), 180, 360, 255, -1)
    elif shape == "frame":
        a, b = round(r * 0.9), round(r * 0.45)
        cv2.rectangle(mask, (round(cx) - a, round(cy) - a), (round(cx) + a, round(cy) + a), 255, -1)
        cv2.rectangle(mask, (round(cx) - b, round(cy) - b), (round(cx) + b, round(cy) + b), 0, -1)
    elif shape == "patch":
        a = round(r * 0.85)
        cv2.rectangle(mask, (round(cx) - a, round(cy) - a), (round(cx) + a, round(cy) + a), 255, -1)
    else:
        raise ValueError(shape)


def _fill(img, mask, fill, r):
    on = mask > 0
    if isinstance(fill[0], str):
        kind, c1, c2 = fill
        yy, xx = np.nonzero(on)
        period = max(2, round(r / 2.5))
        if kind == "stripes":
            pick = (yy // period) % 2 == 0
        else:
            pick = ((yy // period) + (xx // period)) % 2 == 0
        img[yy, xx] = np.where(pick[:, None], np.array(c1, np.uint8), np.array(c2, np.uint8))
    else:
        img[on] = fill


def _muted(rng, n=1):
    """Low-saturation colours: a grey level with a small tint per channel (max - min channel <= 40)."""
    grey = rng.uniform(50, 205, (n, 1))
    return np.clip(grey + rng.uniform(-20, 20, (n, 3)), 0, 255)


def _background(rng, size):
    cells = int(rng.integers(3, 8))
    grid = _muted(rng, cells * cells).reshape(cells, cells, 3).astype(np.float32)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
    img += rng.uniform(-10, 10, (size, size, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):  # distractor lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), _muted(rng)[0].tolist(), int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(2, 6))):  # distractor blobs
        c = tuple(map(int, rng.integers(0, size, 2)))
        axes = tuple(int(a) for a in rng.uniform(0.03, 0.12, 2) * size + 1)
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, _muted(rng)[0].tolist(), -1)
    return img


def render_sample(rng, label, size=96, scale=(0.15, 0.35)):
    """One image (size×size×3 uint8 BGR), its object mask and box (x1, y1, x2, y2), x2/y2 exclusive."""
    _, shape, fill = CLASSES[label]
    img = _background(rng, size)
    side = rng.uniform(*scale) * size
    r = side / 2
    cx, cy = rng.uniform(1.1 * r + 1, size - 1.1 * r - 1, 2)  # rotated corners reach 1.09 r at most
    angle = rng.uniform(-0.35, 0.35)  # about ±20 degrees: a square never becomes a diamond
    mask = np.zeros((size, size), np.uint8)
    _draw_shape(mask, shape, cx, cy, r, angle)
    _fill(img, mask, fill, r)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return img, mask, box


def make_demo_set(out="data/demo", classes=5, images=1200, size=96, seed=0, val_fraction=0.2, scale=(0.15, 0.35),
                  quality=95, progress=True):
    """Write the demo set (see module doc); returns a dict of paths and counts."""
    if not 2 <= classes <= MAX_CLASSES:
        raise CaffeCamError(f"--classes must be between 2 and {MAX_CLASSES}, got {classes}")
    if images < 2 * classes:
        raise CaffeCamError(f"--images {images} is too few for {classes} classes; use at least {2 * classes}")
    if size < 32:
        raise CaffeCamError(f"--size must be at least 32 pixels, got {size}")
    if not 0 <= val_fraction < 1:
        raise CaffeCamError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not 0.05 <= scale[0] <= scale[1] <= 0.8:
        raise CaffeCamError(f"object scale {scale} must satisfy 0.05 <= min <= max <= 0.8 (fractions of the side)")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).permutation(np.arange(images) % classes)
    boxes, rows = [], []
    for i in tqdm(range(images), desc="demo images", unit="img", disable=None if progress else True):
        img, _, box = render_sample(np.random.default_rng([seed, i]), int(labels[i]), size, scale)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise CaffeCamError(f"{out}: OpenCV could not encode a JPEG")
        rel = f"images/{i:05d}.jpg"
        (out / rel).write_bytes(buf.tobytes())
        rows.append((rel, int(labels[i])))
        boxes.append((rel, *box))
    val_idx, pick = set(), np.random.default_rng([seed, images])
    for c in range(classes):  # random members of each class, so neither list is ordered by class
        idx = np.flatnonzero(labels == c)
        val_idx.update(idx[pick.permutation(len(idx))[: round(val_fraction * len(idx))]].tolist())
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    paths = {name: out / name for name in ("train.txt", "val.txt", "class_labels.csv", "boxes.csv")}
    atomic_write_bytes(paths["train.txt"], "".join(f"{p} {lbl}\n" for p, lbl in train).encode())
    atomic_write_bytes(paths["val.txt"], "".join(f"{p} {lbl}\n" for p, lbl in val).encode())
    atomic_write_bytes(paths["class_labels.csv"], "".join(f"{k} {CLASSES[k][0]}\n" for k in range(classes)).encode())
    atomic_write_bytes(paths["boxes.csv"], "".join(" ".join(map(str, b)) + "\n" for b in boxes).encode())
    return {"root": out, "train": paths["train.txt"], "val": paths["val.txt"],
            "class_labels": paths["class_labels.csv"], "boxes": paths["boxes.csv"], "n_train": len(train),
            "n_val": len(val), "classes": classes, "size": size,
            "class_names": [CLASSES[k][0] for k in range(classes)]}
