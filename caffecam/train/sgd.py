"""Caffe's parameter updates (sgd_solver.cpp and friends), fused over parameter groups with torch._foreach_* ops.

One update, in Caffe's order (SGDSolver::ApplyUpdate):
  1. clip_gradients ≥ 0 and ‖g‖₂ (over all parameters) > clip: every g *= clip / ‖g‖
  2. per parameter: iter_size > 1: g *= 1/iter_size
  3. regularization, local_decay = weight_decay·decay_mult: L2: g += local_decay·w; L1: g += local_decay·sign(w)
  4. the method's update value u with local_rate = lr·lr_mult, then w −= u:
     SGD:      h = momentum·h + local_rate·g;  u = h            (the rate is INSIDE the history, unlike torch.optim.SGD)
     Nesterov: h' = momentum·h + local_rate·g;  u = (1+momentum)·h' − momentum·h
     Adam:     m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;  t = iter + 1;
               u = local_rate·sqrt(1−β2^t)/(1−β1^t) · m / (sqrt(v) + delta)       (β1 = momentum, β2 = momentum2)
     AdaGrad:  h += g²;  u = local_rate·g / (sqrt(h) + delta)
     RMSProp:  h = rms_decay·h + (1−rms_decay)·g²;  u = local_rate·g / (sqrt(h) + delta)
     AdaDelta: h = momentum·h + (1−momentum)·g²;  d = g·sqrt((h2 + delta) / (h + delta));
               h2 = momentum·h2 + (1−momentum)·d²;  u = local_rate·d
The history blobs (SolverState.history) are, in net order of the learnable parameters, h; for Adam all m then all v,
for AdaDelta all h then all h2 — the layout real Caffe writes, so its .solverstate files load here and vice versa.
Scalars are rounded to float32 where Caffe holds them in a `Dtype`.
"""

import math

import numpy as np
import torch

from caffecam.errors import CaffeCamError

F32 = np.float32
# Legacy `solver_type` enum value -> `type` string (Caffe's UpgradeSolverType).
LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}
TYPES = ("SGD", "Nesterov", "Adam", "AdaGrad", "RMSProp", "AdaDelta")
_TWO_HISTORIES = ("Adam", "AdaDelta")


def solver_type(sp, where="solver"):
    kind = sp.type if sp.HasField("type") or not sp.HasField("solver_type") else LEGACY_TYPES.get(sp.solver_type)
    if kind not in TYPES:
        raise CaffeCamError(f"{where}: unknown solver type '{kind}'; use one of {', '.join(TYPES)}")
    if kind in ("AdaGrad", "RMSProp") and sp.momentum != 0:
        raise CaffeCamError(f"{where}: momentum cannot be used with {kind}; remove it or set it to 0")
    if kind == "RMSProp" and not 0 <= sp.rms_decay < 1:
        raise CaffeCamError(f"{where}: rms_decay must be in [0, 1) (got {sp.rms_decay})")
    if sp.regularization_type not in ("L1", "L2"):
        raise CaffeCamError(f"{where}: unknown regularization_type '{sp.regularization_type}'; use L2 or L1")
    return kind


def _f32(x):
    """x rounded to float32. A product of two float32 values is exact in double, so _f32(a * b) is Caffe's float
    multiplication."""
    with np.errstate(over="ignore"):
        return float(F32(x))


class Updater:
    """Holds the history and applies one update to `params` from their .grad (None counts as zeros).

    specs: [(name, index, parameter, lr_mult, decay_mult)] as Net.param_specs() gives, in net order.
    Parameters with lr_mult 0 keep their history but are never updated (Caffe computes no gradient for them,
    so with a zero history their update is zero).
    """

    def __init__(self, sp, specs, where="solver", log=None):
        self.sp, self.where = sp, where
        self.kind = solver_type(sp, where)
        self.log = log or (lambda msg: None)
        self.names = [f"{name}[{i}]" for name, i, *_ in specs]
        self.params = [p for _, _, p, _, _ in specs]
        copies = 2 if self.kind in _TWO_HISTORIES else 1
        self.history = [torch.zeros_like(p, memory_format=torch.preserve_format)
                        for _ in range(copies) for p in self.params]
        groups = {}
        for i, (_, _, _, lr_mult, decay_mult) in enumerate(specs):
            if lr_mult != 0:
                groups.setdefault((_f32(lr_mult), _f32(decay_mult)), []).append(i)
        self.groups = groups
        self.trainable = sorted(i for idx in groups.values() for i in idx)

    # -- the update ----------------------------------------------------------------------------------------------
    def grads(self):
        """The .grad of each trainable parameter, in self.trainable order (zeros where backward did not reach).
        Frozen parameters (lr_mult 0) get none: they add nothing to the clipping norm and are never updated."""
        out = []
        for i in self.trainable:
            p = self.params[i]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            out.append(p.grad)
        return out

    def clip(self, grads):
        clip = self.sp.clip_gradients
        if clip < 0 or not grads:
            return
        norm = float(torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)])))
        if norm > clip:
            scale = clip / norm
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:g} > {clip:g}) by scale factor "
                     f"{scale:g}")
            torch._foreach_mul_(grads, _f32(scale))

    @torch.no_grad()
    def step(self, rate, it, iter_size=1):
        """Apply one update at learning rate `rate` (float32-rounded) for update number `it` (from 0)."""
        sp, kind = self.sp, self.kind
        grads = self.grads()
        self.clip(grads)
        if iter_size > 1:
            torch._foreach_mul_(grads, _f32(1.0 / iter_size))
        n = len(self.params)
        for (lr_mult, decay_mult), idx in self.groups.items():
            w = [self.params[i] for i in idx]
            g = [p.grad for p in w]
            h = [self.history[i] for i in idx]
            h2 = [self.history[n + i] for i in idx] if kind in _TWO_HISTORIES else None
            local_decay = _f32(_f32(sp.weight_decay) * decay_mult)
            if local_decay:
                reg = w if sp.regularization_type == "L2" else torch._foreach_sign(w)
                torch._foreach_add_(g, reg, alpha=local_decay)
            local_rate = _f32(rate * lr_mult)
            update = getattr(self, "_" + kind.lower())(w, g, h, h2, local_rate, it)
            if update is not None:
                torch._foreach_sub_(w, update)

    def _sgd(self, w, g, h, h2, rate, it):
        torch._foreach_mul_(h, _f32(self.sp.momentum))
        torch._foreach_add_(h, g, alpha=rate)
        return h

    def _nesterov(self, w, g, h, h2, rate, it):
        m = _f32(self.sp.momentum)
        old = torch._foreach_mul(h, m)
        torch._foreach_mul_(h, m)
        torch._foreach_add_(h, g, alpha=rate)
        update = torch._foreach_mul(h, _f32(1 + m))
        torch._foreach_sub_(update, old)
        return update

    def _adam(self, w, g, m, v, rate, it):
        b1, b2, delta = _f32(self.sp.momentum), _f32(self.sp.momentum2), _f32(self.sp.delta)
        t = it + 1
        correction = _f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, g, alpha=_f32(1 - b1))
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=_f32(1 - b2))
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, delta)
        update = torch._foreach_div(m, denom)
        torch._foreach_mul_(update, _f32(rate * correction))
        return update

    def _adagrad(self, w, g, h, h2, rate, it):
        torch._foreach_addcmul_(h, g, g)
        return self._scaled_by_rms(g, h, rate)

    def _rmsprop(self, w, g, h, h2, rate, it):
        decay = _f32(self.sp.rms_decay)
        torch._foreach_mul_(h, decay)
        torch._foreach_addcmul_(h, g, g, value=_f32(1 - decay))
        return self._scaled_by_rms(g, h, rate)

    def _scaled_by_rms(self, g, h, rate):
        denom = torch._foreach_sqrt(h)
        torch._foreach_add_(denom, _f32(self.sp.delta))
        update = torch._foreach_div(g, denom)
        torch._foreach_mul_(update, rate)
        return update

    def _adadelta(self, w, g, h, h2, rate, it):
        m, delta = _f32(self.sp.momentum), _f32(self.sp.delta)
        torch._foreach_mul_(h, m)
        torch._foreach_addcmul_(h, g, g, value=_f32(1 - m))
        num = torch._foreach_add(h2, delta)
        den = torch._foreach_add(h, delta)
        torch._foreach_div_(num, den)
        torch._foreach_sqrt_(num)
        d = torch._foreach_mul(g, num)
        torch._foreach_mul_(h2, m)
        torch._foreach_addcmul_(h2, d, d, value=_f32(1 - m))
        torch._foreach_mul_(d, rate)
        return d

    # -- SolverState history -------------------------------------------------------------------------------------
    def history_arrays(self):
        return [h.detach().float().cpu().numpy() for h in self.history]

    def load_history(self, arrays, where):
        if len(arrays) != len(self.history):
            raise CaffeCamError(f"{where}: {len(arrays)} history blobs, the {self.kind} solver of this net needs "
                                f"{len(self.history)}; the snapshot is from another net or solver type")
        n = len(self.params)
        for i, (array, h) in enumerate(zip(arrays, self.history)):
            if array.size != h.numel():
                raise CaffeCamError(f"{where}: history blob {i} ({self.names[i % n]}) has {array.size} values, the "
                                    f"net needs {tuple(h.shape)}; the snapshot is from another net")
            with torch.no_grad():
                h.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(h.shape))
