"""A small demo-like run for the report's tests: an "oracle" net whose class maps are the image's B, G and R
channels, 15 generated images of several sizes with smooth blobs (so the box moves with the threshold), a labelled
list with some wrong labels, ground-truth boxes; scripts/cam.py runs on it as a user would."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.engine.weights import save_caffemodel
from caffecam.proto import caffe_pb2
from tests.cam.test_localize import ORACLE

REPO = Path(__file__).resolve().parents[2]
CAM = REPO / "scripts" / "cam.py"
CLASSES = ["blue", "green", "red"]
ORACLE3 = ORACLE.replace("num_output: 2", "num_output: 3")
SIZES = [(96, 64), (40, 56), (120, 90), (33, 47), (64, 64)]
WRONG = {2: 1, 7: 0, 11: 0}  # image index -> the (wrong) label given in the list


def oracle3_net():
    """Class c scores channel c (B, G, R): its map is that channel of the 32×32 input, times 0.05."""
    net = Net(parse_text(ORACLE3, caffe_pb2.NetParameter))
    with torch.no_grad():
        net.params["feat"][0].copy_(torch.eye(3).reshape(3, 3, 1, 1))
        net.params["feat"][1].zero_()
        net.params["fc"][0].copy_(0.05 * torch.eye(3))  # probabilities short of 1
        net.params["fc"][1].zero_()
    return net


def blob(h, w, cx, cy, sigma, amp):
    y, x = np.mgrid[0:h, 0:w]
    return amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))


def make_images(folder, n=15, seed=0):
    """n PNGs; image i is mostly channel i % 3: a strong small blob and a weaker wide one of that channel, a faint
    blob of the next channel. Returns [(name, label, box)]: the listed label and the strong blob's box."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        c = i % 3
        img = np.zeros((h, w, 3), np.float64)
        s = min(w, h)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        img[..., c] += blob(h, w, cx, cy, 0.1 * s, 255)
        img[..., c] += blob(h, w, w - cx, h - cy, 0.2 * s, 110)
        img[..., (c + 1) % 3] += blob(h, w, rng.uniform(0, w), rng.uniform(0, h), 0.15 * s, 90)
        name = f"img{i:02d}.png"
        cv2.imwrite(str(folder / name), np.clip(img, 0, 255).astype(np.uint8))
        r = 0.25 * s
        box = [max(0, round(cx - r)), max(0, round(cy - r)), min(w, round(cx + r)), min(h, round(cy + r))]
        specs.append((name, WRONG.get(i, c), box))
    (folder / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab, _ in specs))
    (folder / "boxes.csv").write_text("".join(f"{n} {' '.join(map(str, b))}\n" for n, _, b in specs))
    return specs


def make_run(root):
    """Data, net and a cam.py run with --top-k 2 --save-maps and --eval-boxes into root/out; returns a dict of
    the paths and the completed process."""
    data = root / "data"
    specs = make_images(data)
    (root / "oracle.prototxt").write_text(ORACLE3)
    save_caffemodel(oracle3_net(), root / "oracle.caffemodel")
    (root / "labels.csv").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASSES)))
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, str(CAM), "--no-progress", "--model", root / "oracle.prototxt", "--weights",
         root / "oracle.caffemodel", "--labels", root / "labels.csv", "--mean", "0", "--top-k", "2", "--save-maps",
         "--box-threshold", "0.3", "--eval-boxes", data / "boxes.csv", "--eval-json", root / "loc.json", "--out", out,
         data / "val.txt"], capture_output=True, text=True, timeout=300)
    return {"root": root, "data": data, "out": out, "specs": specs, "proc": proc, "loc": root / "loc.json"}
