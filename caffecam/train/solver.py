"""Caffe's Solver on PyTorch: Solve/Step/Test/Snapshot/Restore in Caffe's order, with Caffe's log lines.

One iteration (Solver::Step): test when iter % test_interval == 0 (and iter > 0 or test_initialization); iter_size
forward/backward passes (loss = their mean; the smoothed loss is over the last average_loss iterations); display;
the update (sgd.py, rate from lr_policy.py); iter += 1; snapshot when iter % snapshot == 0.
Determinism: random_seed seeds the fillers, the data stream (data/feeds.py: a function of seed and batch number) and
dropout (the RNG is re-seeded from (seed, rank, iter) every iteration), so a resume continues the same run: the data
feeds restart at batch iter·iter_size, the test feeds after the test phases already run.
Memory format: channels_last=None (auto) means channels_last on the CPU, contiguous on CUDA. Measured on this 2-core
CPU (shared, noisy): GoogLeNet-CAM batch 8 forward+backward 1.94 s vs 2.38 s contiguous, the demo net 0.26 s vs
0.37 s; gradients differ from the contiguous ones by float noise only (against a float64 run the worst blob is off
by 0.2% in channels_last and 0.8% contiguous). On CUDA it stays opt-in (fidelity first).
"""

import functools
import math
import secrets
import time

import numpy as np
import torch

from caffecam.engine import precision
from caffecam.engine.net import Net
from caffecam.errors import CaffeCamError, net_label
from caffecam.proto import caffe_pb2
from caffecam.train import distributed, lr_policy, sgd, snapshots, solver_feeds, solver_nets

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class Solver:
    """Solver(solver_param, solver_path, device, logger): builds the TRAIN net and the TEST nets (sharing weights).

    feeds: factory(net_param, net_state, seed, rank, world_size, start_batch) -> [feed] (default: caffecam.data.feeds).
    group: a caffecam.distributed.Group when running under torchrun (rank 0 logs and snapshots; every rank runs
    its share of each test phase).
    on_iteration: called with the iteration number after every update (progress bars).
    tf32: let CUDA round float32 convolutions and matrix products to TF32 (caffecam.engine.precision).
    """

    def __init__(self, solver_param, solver_path="solver.prototxt", device="cpu", logger=None, rank=0, world_size=1,
                 feeds=None, workers=2, channels_last=None, bf16=False, group=None, on_iteration=None,
                 max_pixels=None, tf32=False):
        sp = self.sp = solver_param
        self.where = str(solver_path)
        self.device = torch.device(device)
        self.log = logger
        self.rank, self.world_size, self.group = rank, world_size, group
        self.root = rank == 0
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.channels_last, self.on_iteration = channels_last, on_iteration
        self.bf16 = bool(bf16)
        cuda_math = precision.configure(self.device, tf32, deterministic=sp.random_seed >= 0)
        if cuda_math:
            self._info(f"{cuda_math} (random_seed {sp.random_seed})")
        if self.bf16:
            self._info(f"{precision.check_bf16(self.device)}: parameters, gradients and updates in float32")
        solver_nets.check_numbers(sp, self.where)
        lr_policy.check(sp, self.where)
        self.kind = sgd.solver_type(sp, self.where)
        self.prefix = solver_nets.snapshot_prefix(sp, self.where)
        if self.root and (sp.snapshot or sp.snapshot_after_train):
            snapshots.check_writable(self.prefix, solver_nets.field_line(self.where, "snapshot_prefix"))
        self.seed = sp.random_seed if sp.random_seed >= 0 else secrets.randbits(62)
        if group is not None and sp.random_seed < 0:
            self.seed = group.broadcast_int(self.seed)  # every rank must cut the same data stream
        self._feed_factory = feeds or solver_feeds.data_feeds(workers, max_pixels=max_pixels,
                                                              pin_memory=self.device.type == "cuda",
                                                              channels_last=channels_last)
        self.iter, self.current_step, self.stop_requested, self.stopped = 0, 0, False, False
        self._last_snapshot, self.last_snapshot_path = None, None
        self.train_feeds, self.test_feeds, self.test_nets = [], [], []

        self.train_param, self.train_state = train_param, train_state = solver_nets.train_net(sp, self.where)
        self.train_feeds = self._open_feeds(train_param, train_state, 0)
        self.net = Net(train_param, TRAIN, input_shapes=solver_feeds.feed_shapes(self.train_feeds),
                       seed=self._filler_seed(), level=train_state.level, stages=tuple(train_state.stage))
        solver_feeds.check_fed(self.where, self.net, self.train_feeds)
        self._prepare(self.net)
        self.test_specs = solver_nets.test_nets(sp, self.where)
        self._test_cursor = [0] * len(self.test_specs)  # test batches read so far by all ranks together, per net
        for param, state, _ in self.test_specs:
            feeds = self._open_feeds(param, state, 0)
            net = Net(param, TEST, input_shapes=solver_feeds.feed_shapes(feeds), seed=self._filler_seed(),
                      level=state.level, stages=tuple(state.stage))
            solver_feeds.check_fed(self.where, net, feeds)
            self._share_weights(net)
            self._prepare(net)
            self.test_nets.append(net)
            self.test_feeds.append(feeds)

        specs = self.net.param_specs()
        for _, _, p, lr_mult, _ in specs:
            p.requires_grad_(lr_mult != 0)  # Caffe computes no gradient for a blob with lr_mult 0
        self.updater = sgd.Updater(sp, specs, self.where, log=self._info)
        self._trainable = [specs[i][2] for i in self.updater.trainable]
        if not self._trainable:
            raise CaffeCamError(f"{self.where}: every parameter of {net_label(self.net.name)} has lr_mult 0: "
                                "nothing to train")
        if not self.net.loss_weights:
            raise CaffeCamError(f"{self.where}: {net_label(self.net.name)} has no loss layer (e.g. SoftmaxWithLoss)")
        solver_feeds.check_labels([(self.net, self.train_feeds), *zip(self.test_nets, self.test_feeds)])
        # engine: CAFFE keeps a layer direct; bfloat16 autocast too (winograd.suits)
        fast = self.net.winograd_layers() if self.device.type == "cpu" and not self.bf16 else []
        if fast:
            self._info(f"Winograd F(2x2,3x3) convolution for {', '.join(fast)}")
        # images per iteration: the first data layer's batch (DummyData and MemoryData make theirs in the net)
        self.batch_size = self.train_feeds[0].batch_size if self.train_feeds else self.net.layers[0].top_shapes[0][0]
        self._losses, self.smoothed_loss = [], 0.0
        self.data_wait_s = 0.0  # time spent waiting for training batches (bench: how much data loading stalls)

    # -- set-up helpers ------------------------------------------------------------------------------------------
    def _info(self, msg):
        if self.log is not None and self.root:
            self.log.info(msg)

    def _warn(self, msg):
        if self.log is not None and self.root:
            self.log.warning(msg)

    def _filler_seed(self):
        return self.sp.random_seed if self.sp.random_seed >= 0 else None

    def _open_feeds(self, param, state, start_batch):
        return list(self._feed_factory(param, state, self.seed, self.rank, self.world_size, start_batch))

    def _share_weights(self, test_net):
        """Caffe's ShareTrainedLayersWith: a test layer with a train layer's name uses the same blobs."""
        for name, layer in test_net.layer_by_name.items():
            source = self.net.layer_by_name.get(name)
            if source is None or not len(layer.blobs):
                continue
            for i, (mine, theirs) in enumerate(zip(layer.blobs, source.blobs)):
                if mine.shape != theirs.shape:
                    raise CaffeCamError(f"{self.where}: layer '{name}' blob {i} is {tuple(mine.shape)} in the test "
                                        f"net but {tuple(theirs.shape)} in the train net")
                layer.blobs[i] = theirs

    def _prepare(self, net):
        net.to(self.device)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)

    def _reseed(self):
        """Seed the generator dropout draws from (torch.manual_seed is 70× slower: it visits every backend)."""
        seed = solver_feeds.iteration_seed(self.seed, self.rank, self.iter)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)

    def _autocast(self):
        return precision.autocast(self.device, self.bf16)

    def _inputs(self, feeds):
        out = {}
        for f in feeds:
            try:
                batch = f.next()
            except CaffeCamError:
                self._snapshot_before_failing()
                raise
            for name, value in batch.items():
                t = torch.as_tensor(value).to(self.device, non_blocking=True)
                if self.channels_last and t.dim() == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
                out[name] = t
        return out

    def _snapshot_before_failing(self):
        """A data error ends the run: keep the updates since the last snapshot (data comes before an update)."""
        if not self.root or self.iter == 0 or self._last_snapshot == self.iter:
            return
        try:
            path = self.snapshot()
        except CaffeCamError as exc:
            self._warn(f"could not write a snapshot before stopping: {exc}")
        else:
            self._warn(f"stopping on the data error below; iterations so far are saved in {path}")

    def close(self):
        for feeds in [self.train_feeds, *self.test_feeds]:
            for f in feeds:
                f.close()

    # -- the loop --------------------------------------------------------------------------------------------
    def request_stop(self):
        """Finish the current iteration, snapshot and stop (what Ctrl-C and SIGTERM do)."""
        self.stop_requested = True

    def solve(self):
        """Caffe's Solver::Solve: train up to max_iter; returns 'done' or 'stopped'."""
        sp = self.sp
        if self.log is not None and self.root:
            self.log.solving(self.net.name)
            self.log.lr_policy(sp.lr_policy)
        if self.group is not None:
            self.group.broadcast([p.data for p in self.net.parameters()] + self.updater.history)
        start_iter = self.iter
        self._losses, self.smoothed_loss = [], 0.0
        self._step(sp.max_iter - self.iter, start_iter)
        just_saved = self._last_snapshot == self.iter
        if (self.stopped or sp.snapshot_after_train) and not just_saved and self.root:
            self.snapshot()
        if self.stopped:
            if self.log is not None and self.root:
                self.log.stopped_early()
            return "stopped"
        if sp.display and self.iter % sp.display == 0:
            # Caffe's one more forward pass after the last update (not a training step).
            with torch.no_grad(), self._autocast():
                loss = float(self.net.loss(self.net(self._inputs(self.train_feeds))))
            self._smooth(loss, start_iter)
            if self.log is not None and self.root:
                self.log.iteration(self.iter, self.smoothed_loss)
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test_all()
        if self.log is not None and self.root:
            self.log.done()
        return "done"

    def step(self, iters):
        """Caffe's Solver::Step: `iters` training iterations, with tests, display and snapshots as configured."""
        self._step(iters, self.iter)

    def _smooth(self, loss, start_iter):
        """Caffe's UpdateSmoothedLoss: a running mean over the last average_loss values."""
        n = self.sp.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            self.smoothed_loss = (self.smoothed_loss * (len(self._losses) - 1) + loss) / len(self._losses)
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def _step(self, iters, start_iter):
        sp = self.sp
        stop_iter = self.iter + iters
        last_time, last_iter = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            if sp.test_interval and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                self.test_all()
                if self.stop_requested and self.group is None:
                    self.stopped = True
                    break
            display = sp.display and self.iter % sp.display == 0
            for p in self._trainable:
                p.grad = None
            total = None
            for k in range(sp.iter_size):
                t0 = time.perf_counter()
                inputs = self._inputs(self.train_feeds)
                self.data_wait_s += time.perf_counter() - t0
                if k == 0:  # dropout's RNG; after fetching (a loader starting its workers draws from the RNG)
                    self._reseed()
                with self._autocast():
                    blobs = self.net(inputs)
                    loss = self.net.loss(blobs)
                loss.backward()
                total = loss.detach().float() if total is None else total + loss.detach().float()
            loss = self._sync(total / sp.iter_size)
            if not math.isfinite(loss):
                raise CaffeCamError(f"{self.where}: iteration {self.iter}: the loss is {loss}; training stopped "
                                    f"(base_lr {sp.base_lr:g} is probably too high: lower it or set clip_gradients)")
            self._smooth(loss, start_iter)
            if display and self.log is not None and self.root:
                now = time.perf_counter()
                lapse = now - last_time
                per_s = (self.iter - last_iter) / (lapse if lapse else 1)
                self.log.iteration(self.iter, self.smoothed_loss, per_s, lapse, sp.display)
                last_time, last_iter = now, self.iter
                self._log_outputs("train", self.net, [blobs[b].detach() for b in self.net.output_blobs])
            self._update(display)
            self.iter += 1
            if self.on_iteration is not None:
                self.on_iteration(self.iter)
            if sp.snapshot and self.iter % sp.snapshot == 0 and self.root:
                self.snapshot()
            if self.stop_requested:
                self.stopped = True
                break

    def _sync(self, loss):
        """The iteration's loss as a float; under torchrun also averages the gradients and agrees on stopping."""
        if self.group is None:
            return float(loss)
        extras = torch.stack([loss.reshape(()), torch.tensor(float(self.stop_requested), device=loss.device)])
        loss_sum, stops = self.group.average_grads(self.updater.grads(), extras)
        self.stop_requested = stops > 0
        return loss_sum / self.world_size

    def _update(self, display):
        """SGDSolver::ApplyUpdate: the rate for this iteration, then clip, normalize, regularize, update."""
        rate, self.current_step, msg = lr_policy.learning_rate(self.sp, self.iter, self.current_step, self.where)
        rate = float(np.float32(rate))
        if msg:
            self._info(msg)
        if display and self.log is not None and self.root:
            self.log.lr(self.iter, rate)
        self.updater.step(rate, self.iter, self.sp.iter_size)

    def _log_outputs(self, kind, net, tensors):
        """`Train/Test net output #i: NAME = V` for every element of every net output (Caffe numbers elements)."""
        values = torch.cat([t.float().reshape(-1) for t in tensors]).tolist() if tensors else []
        write = self.log.train_output if kind == "train" else self.log.test_output
        i = 0
        for name, t in zip(net.output_blobs, tensors):
            for _ in range(t.numel()):
                write(i, name, values[i], net.loss_weights.get(name, 0))
                i += 1

    # -- testing -------------------------------------------------------------------------------------------------
    def test_all(self):
        for k in range(len(self.test_nets)):
            self.test(k)

    @torch.no_grad()
    def test(self, k=0):
        """Solver::Test: mean of each output over test_iter batches, logged as `Test net output #i`.

        Under torchrun the ranks share the pass (none waits alone in a collective, past NCCL's timeout): each runs
        its share of the batches (distributed.shared_batches) and the per-batch outputs, gathered, are summed in
        batch order: the same numbers as one process reading every batch."""
        net, feeds, n = self.test_nets[k], self.test_feeds[k], self.test_specs[k][2]
        if self.log is not None:
            self.log.testing(self.iter, k)
        start = self._test_cursor[k]
        self._test_cursor[k] = start + n
        rows = []  # per batch: every output's elements, then the loss
        for _ in distributed.shared_batches(start, n, self.rank, self.world_size):
            if self.stop_requested and self.group is None:
                self._info("Test interrupted.")
                return None
            with self._autocast():
                blobs = net(self._inputs(feeds))
                row = [blobs[b].detach().float().reshape(-1) for b in net.output_blobs]
                if self.sp.test_compute_loss:
                    row.append(net.loss(blobs).float().reshape(1))
            rows.append(torch.cat(row))
        sizes = [math.prod(net.blob_shapes[b]) for b in net.output_blobs]
        if self.group is not None:
            rows = self.group.gather_shared(rows, start, n, sum(sizes) + int(self.sp.test_compute_loss))
        total = functools.reduce(torch.add, rows)  # in batch order, as one process adds them up
        means = [t.reshape(net.blob_shapes[b]) for t, b in zip((total[:sum(sizes)] / n).split(sizes), net.output_blobs)]
        if self.sp.test_compute_loss:
            self._info(f"Test loss: {float(total[-1]) / n:g}")
        if self.log is not None:
            self._log_outputs("test", net, means)
        return {name: t.cpu() for name, t in zip(net.output_blobs, means)}

    # -- snapshots (caffecam/train/snapshots.py) -----------------------------------------------------------------
    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate (atomically); returns the .solverstate path."""
        return snapshots.write(self)

    def restore(self, path):
        """Resume from a .solverstate: weights (learned_net), history, iter, current_step, data positions."""
        snapshots.restore(self, path)

    def _reopen_feeds(self):
        """Restart the data where the run left it: the train feeds after iter·iter_size batches, each test feed
        after the test phases already run (each of test_iter batches)."""
        self.close()
        self.train_feeds = self._open_feeds(self.train_param, self.train_state, self.iter * self.sp.iter_size)
        tests = solver_nets.tests_before(self.sp, self.iter)
        self._test_cursor = [tests * n for _, _, n in self.test_specs]
        self.test_feeds = [self._open_feeds(p, state, distributed.batches_before(cursor, self.rank, self.world_size))
                           for (p, state, _), cursor in zip(self.test_specs, self._test_cursor)]
