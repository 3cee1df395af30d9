"""Shared by the solver tests: a tiny softmax-regression net, an in-memory feed, and a float64 NumPy reference of
Caffe's solvers written from shared/caffe-format.md §2 and Caffe's update formulas (not from caffecam)."""

import io

import cv2
import numpy as np
import torch

from caffecam.engine.prototxt import parse_text
from caffecam.proto import caffe_pb2
from caffecam.train.log import CaffeLogger
from caffecam.train.solver import Solver

D, K = 5, 3  # features, classes
LINEAR_NET = f"""
name: "lin"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 4 dim: {D} }} shape {{ dim: 4 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param {{ lr_mult: LRW decay_mult: 1 }} param {{ lr_mult: LRB decay_mult: 0 }}
        inner_product_param {{ num_output: {K} weight_filler {{ type: "gaussian" std: 0.5 }}
                               bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""


def dataset(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = rng.integers(0, K, size=n).astype(np.int64)
    return x, y


class ArrayFeed:
    """The BatchFeed interface over arrays: batch b holds items (b·N + k) mod len, k < N."""

    def __init__(self, x, y, batch_size, start_batch=0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.top_names = ["data", "label"]
        self.shapes = {"data": (batch_size,) + x.shape[1:], "label": (batch_size,)}
        self.num_items, self.batches_done, self.closed = len(x), start_batch, False

    def next(self):
        idx = (np.arange(self.batch_size) + self.batches_done * self.batch_size) % self.num_items
        self.batches_done += 1
        return {"data": torch.from_numpy(self.x[idx]), "label": torch.from_numpy(self.y[idx])}

    def close(self):
        self.closed = True


def array_feeds(train, test, batch=4, test_batch=4, opened=None):
    def factory(net_param, state, seed, rank, world_size, start_batch):
        phase = state.phase
        x, y = train if phase == caffe_pb2.TRAIN else test
        feed = ArrayFeed(x, y, batch if phase == caffe_pb2.TRAIN else test_batch, start_batch)
        if opened is not None:
            opened.append((phase, start_batch, feed))
        return [feed]

    return factory


def linear_solver(text, batch=4, lr_w=1, lr_b=2, train=None, test=None, stream=None, log_path=None, **kw):
    """A Solver over LINEAR_NET (inline net_param) with the solver fields in `text`."""
    net = LINEAR_NET.replace("LRW", str(lr_w)).replace("LRB", str(lr_b))
    sp = parse_text(text, caffe_pb2.SolverParameter)
    sp.net_param.CopyFrom(parse_text(net, caffe_pb2.NetParameter))
    train = train if train is not None else dataset()
    test = test if test is not None else dataset(8, seed=1)
    logger = CaffeLogger(log_path, stream=stream if stream is not None else io.StringIO())
    return Solver(sp, "solver.prototxt", "cpu", logger, feeds=array_feeds(train, test, batch), **kw)


# ---- NumPy reference ---------------------------------------------------------------------------------------------

def softmax_loss_grads(w, b, x, y):
    """Mean cross-entropy of softmax(x·wᵀ + b) and its gradients (float64)."""
    z = x @ w.T + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    return loss, p.T @ x, p.sum(0)


def reference(w, b, x, y, iters, batch, base_lr, kind="SGD", lr_mults=(1, 2), decay_mults=(1, 0), momentum=0.9,
              weight_decay=0.0, regularization="L2", iter_size=1, clip=-1.0, gamma=0.5, stepsize=None,
              momentum2=0.999, delta=1e-8, rms_decay=0.99):
    """Caffe's update on (w, b) over `iters` iterations. Returns (params, history list, losses per iteration)."""
    params = [w.astype(np.float64), b.astype(np.float64)]
    h = [np.zeros_like(p) for p in params]
    h2 = [np.zeros_like(p) for p in params]
    losses = []
    n = len(x)
    for it in range(iters):
        grads, loss = [np.zeros_like(p) for p in params], 0.0
        for k in range(iter_size):
            idx = (np.arange(batch) + (it * iter_size + k) * batch) % n
            lk, gw, gb = softmax_loss_grads(params[0], params[1], x[idx].astype(np.float64), y[idx])
            grads[0] += gw
            grads[1] += gb
            loss += lk
        losses.append(loss / iter_size)
        rate = base_lr * gamma ** (it // stepsize) if stepsize else base_lr
        if clip >= 0:
            norm = np.sqrt(sum((g ** 2).sum() for g in grads))
            if norm > clip:
                grads = [g * clip / norm for g in grads]
        for i in range(2):
            g = grads[i] / iter_size
            decay = weight_decay * decay_mults[i]
            g = g + decay * (params[i] if regularization == "L2" else np.sign(params[i]))
            lr = rate * lr_mults[i]
            if lr_mults[i] == 0:
                continue
            if kind == "SGD":
                h[i] = momentum * h[i] + lr * g
                step = h[i]
            elif kind == "Nesterov":
                old = h[i]
                h[i] = momentum * h[i] + lr * g
                step = (1 + momentum) * h[i] - momentum * old
            elif kind == "Adam":
                t = it + 1
                h[i] = momentum * h[i] + (1 - momentum) * g
                h2[i] = momentum2 * h2[i] + (1 - momentum2) * g * g
                step = lr * np.sqrt(1 - momentum2 ** t) / (1 - momentum ** t) * h[i] / (np.sqrt(h2[i]) + delta)
            elif kind == "AdaGrad":
                h[i] = h[i] + g * g
                step = lr * g / (np.sqrt(h[i]) + delta)
            elif kind == "RMSProp":
                h[i] = rms_decay * h[i] + (1 - rms_decay) * g * g
                step = lr * g / (np.sqrt(h[i]) + delta)
            elif kind == "AdaDelta":
                h[i] = momentum * h[i] + (1 - momentum) * g * g
                d = g * np.sqrt((h2[i] + delta) / (h[i] + delta))
                h2[i] = momentum * h2[i] + (1 - momentum) * d * d
                step = lr * d
            params[i] = params[i] - step
    history = h + h2 if kind in ("Adam", "AdaDelta") else h
    return params, history, losses


def weights_of(solver):
    w, b = solver.net.params["ip"]
    return w.detach().numpy().astype(np.float64), b.detach().numpy().astype(np.float64)


def write_images(folder, n=10, size=12, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        cv2.imwrite(str(folder / "img" / f"{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        lines.append(f"img/{i}.png {i % 3}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


IMAGE_NET = """name: "tinyimg"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 8 mean_value: 128 scale: 0.01 }
  image_data_param { source: "DIR/list.txt" root_folder: "DIR/" batch_size: 3 shuffle: true } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 8 mean_value: 128 scale: 0.01 }
  image_data_param { source: "DIR/list.txt" root_folder: "DIR/" batch_size: 4 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
"""
