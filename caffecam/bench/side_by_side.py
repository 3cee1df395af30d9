"""Ours against the real peers in one run (peers.py runs them): training GoogLeNet-CAM on the same train_val, the
same batch and the same JPEGs with `caffe train` and scripts/train.py, and a deploy net's forward against OpenCV 4
DNN and `caffe time` (zoo.py builds the nets). Every ratio divides two figures measured here, now."""

import statistics
from pathlib import Path

import torch
from google.protobuf import text_format

from caffecam.bench import peers
from caffecam.bench.peak import fraction
from caffecam.bench.timing import interleaved
from caffecam.engine import precision
from caffecam.engine.cost import forward_flops_per_image
from caffecam.engine.net import TRAIN, Net
from caffecam.nets.builders import image_data_layers
from caffecam.nets.googlenet_cam import googlenet_cam
from caffecam.proto import caffe_pb2

# OpenCV's output against ours, max |difference| / max |ours|, before its speed counts: 50 float32 layers summed in
# another order (and BatchNorm folded by each side its own way) differ by 1e-4 to 2e-4 on ResNet-50's softmax
AGREE = 1e-3


def ratio(a, b):
    return a / b if a is not None and b else None


def _measure(what, fn, notes):
    """fn() or None, with the reason noted when the peer failed."""
    try:
        return fn()
    except peers.PeerError as exc:
        notes.append(f"{what}: {exc}")
        return None


def write_training(work, spec, list_path, root, resize, batch, iterations):
    """train_val.prototxt (GoogLeNet-CAM over the ImageData list) and solver.prototxt under work/; the solver's
    path. display: 1 logs every iteration's speed; no test, no snapshot."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data = image_data_layers(str(list_path), str(list_path), f"{root}/", resize, spec["input_size"], batch, batch)
    param = googlenet_cam(spec["num_classes"], spec["width_div"], spec["input_size"], data=data, head="loss")
    (work / "train_val.prototxt").write_text(text_format.MessageToString(param))
    solver = caffe_pb2.SolverParameter(net=str(work / "train_val.prototxt"), base_lr=0.001, lr_policy="fixed",
                                       momentum=0.9, weight_decay=0.0005, display=1, max_iter=iterations,
                                       snapshot=0, snapshot_after_train=False, random_seed=1,
                                       snapshot_prefix=str(work / "snapshots" / "bench"),
                                       solver_mode=caffe_pb2.SolverParameter.CPU)
    (work / "snapshots").mkdir(exist_ok=True)
    (work / "solver.prototxt").write_text(text_format.MessageToString(solver))
    return work / "solver.prototxt", param


def training(work, spec, list_path, root, resize, batch, warmup, steps, peak, notes, rounds=1):
    """images/s of `caffe train` and train.py (fp32; bf16 where the CPU has it) on one solver, their ratios and
    the share of the peak each uses (a training step counted as 3 forwards).

    Each side runs `rounds` times, in alternating order (Caffe, fp32, bf16, then bf16, fp32, Caffe, ...), each run's
    first `warmup` iterations left out; a side's figure is the median of all its timed iterations, so that a drift
    of the machine's speed during the section falls on both sides alike. The fp32 ratio of each round is kept."""
    solver, param = write_training(work, spec, list_path, root, resize, batch, warmup + steps)
    net = Net(param, TRAIN, input_shapes={"data": (batch, 3, spec["input_size"], spec["input_size"])}, meta=True)
    flops = 3 * forward_flops_per_image(net)
    tool, why = peers.caffe_tool()
    if why:
        notes.append(why)
    out = {"batch": batch, "timed_iterations": steps * rounds, "warmup_iterations": warmup, "rounds": rounds,
           "train_flops_per_image": flops}
    runs = {"caffe": ("caffe train", lambda: peers.caffe_train_speeds(tool, solver, work, warmup)) if tool else None,
            "ours_fp32": ("train.py", lambda: peers.ours_train_speeds(solver, work, warmup)),
            "ours_bf16": ("train.py --bf16", lambda: peers.ours_train_speeds(solver, work, warmup, bf16=True))
            if precision.cpu_bf16_support() else None}
    runs = {k: v for k, v in runs.items() if v is not None}
    speeds, by_round = {k: [] for k in runs}, []
    for r in range(rounds):
        medians = {}
        for side in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            got = _measure(*runs[side], notes) if side in runs else None
            if got is None:
                runs.pop(side, None)  # failed: noted once, not run again
                continue
            speeds[side] += got
            medians[side] = statistics.median(got)
        by_round.append(ratio(medians.get("ours_fp32"), medians.get("caffe")))
    for side in ("ours_fp32", "ours_bf16", "caffe"):
        got = speeds.get(side)
        out[f"{side}_images_per_s"] = statistics.median(got) * batch if got else None
    out["fp32_vs_caffe_by_round"] = by_round
    out["fp32_vs_caffe"] = ratio(out["ours_fp32_images_per_s"], out["caffe_images_per_s"])
    out["bf16_vs_caffe_fp32"] = ratio(out["ours_bf16_images_per_s"], out["caffe_images_per_s"])
    for side, tag in (("ours_fp32", "fp32"), ("ours_bf16", "bf16"), ("caffe", "fp32")):
        out[f"{side}_peak_fraction"] = fraction(out[f"{side}_images_per_s"], flops, peak.get(f"{tag}_peak_gflops"))
    return out


def _start_cv4(case, ours, out, notes):
    """OpenCV 4 DNN on the case's files, kept running, when its output agrees with ours; else None (noted)."""
    python, why = peers.cv4_python()
    if why:
        notes.append(why)
        return None
    try:
        server = peers.Cv4Server(python, case.prototxt, case.weights, case.input, case.out_blob, case.prototxt.parent)
    except peers.PeerError as exc:
        notes.append(f"OpenCV 4 DNN on {case.name}: {exc}")
        return None
    out["cv4_max_rel_diff"] = peers.max_rel_diff(server.output, ours)
    out["cv4_load_s"], out["opencv"] = server.figures["load_s"], server.figures["opencv"]
    if out["cv4_max_rel_diff"] <= AGREE:
        return server
    notes.append(f"OpenCV 4 DNN on {case.name}: its output differs from ours by {out['cv4_max_rel_diff']:.1e} "
                 f"(more than {AGREE:g}), so its speed is not reported")
    server.close()
    return None


def deploy(case, rounds, budget_s, caffe_iterations, peak, notes, unfolded=True):
    """One zoo.DeployCase: our forward (fp32; bf16 where native; BatchNorm unfolded for comparison) and OpenCV 4
    DNN's (a process kept running, after its output agrees with ours) timed interleaved round by round, then
    `caffe time` -> images/s, ratios and fractions of the peak."""
    net, batch = case.net, len(case.input)
    x = torch.from_numpy(case.input).contiguous(memory_format=torch.channels_last)
    plan = net.fold

    def forward(bf16=False, fold=True):
        net.fold = plan if fold else None
        try:
            with torch.inference_mode(), precision.autocast("cpu", bf16):
                return net(x)[case.out_blob].float()
        finally:
            net.fold = plan

    out = {"net": case.name, "batch": batch, "flops_per_image": case.flops_per_image,
           "batch_norms_folded": case.batch_norms, "cv4_images_per_s": None, "cv4_max_rel_diff": None,
           "cv4_load_s": None, "caffe_images_per_s": None}
    calls = {"fp32": forward}
    if precision.cpu_bf16_support():
        calls["bf16"] = lambda: forward(bf16=True)
    if unfolded and case.batch_norms:
        calls["fp32_unfolded"] = lambda: forward(fold=False)
    server = _start_cv4(case, forward().numpy(), out, notes)
    try:
        if server is not None:
            calls["cv4"] = server
        times = interleaved(calls, rounds, budget_s)
    except peers.PeerError as exc:
        notes.append(f"OpenCV 4 DNN on {case.name}: {exc}")
        calls.pop("cv4")
        times = interleaved(calls, rounds, budget_s)
    finally:
        if server is not None:
            server.close()
    for key in ("fp32", "bf16", "fp32_unfolded"):
        out[f"ours_{key}_images_per_s"] = batch / times[key] if key in times else None
    out["fold_speedup"] = ratio(out["ours_fp32_images_per_s"], out["ours_fp32_unfolded_images_per_s"])
    out["cv4_images_per_s"] = batch / times["cv4"] if "cv4" in times else None
    tool, why = peers.caffe_tool()
    if tool:  # alone, after the interleaved rounds: Caffe's own tool and timer
        seconds = _measure(f"caffe time on {case.name}", lambda: peers.caffe_forward_s(
            tool, case.prototxt, case.weights, caffe_iterations, case.prototxt.parent), notes)
        out["caffe_images_per_s"] = batch / seconds if seconds else None
    for key in ("fp32", "bf16"):
        mine = out[f"ours_{key}_images_per_s"]
        out[f"{key}_vs_cv4"] = ratio(mine, out["cv4_images_per_s"])
        out[f"{key}_vs_caffe"] = ratio(mine, out["caffe_images_per_s"])
    for side, tag in (("ours_fp32", "fp32"), ("ours_bf16", "bf16"), ("cv4", "fp32"), ("caffe", "fp32")):
        out[f"{side}_peak_fraction"] = fraction(out[f"{side}_images_per_s"], case.flops_per_image,
                                                peak.get(f"{tag}_peak_gflops"))
    return out
