"""Class activation maps: overlays, boxes, JSON, raw maps, a gallery, and localization scores."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import re

# Only what parsing needs is imported here (no torch): --help and option errors come at once. The rest in main().
from caffecam.cam.options import add_model_args, check_model_args
from caffecam.errors import CaffeCamError, main_guard, rank_zero_speaks

AUTO_MODEL = "prototxt/googlenet_cam_deploy.prototxt"
AUTO_SNAPSHOTS = "snapshots"
AUTO_PREFIX = "googlenet_cam_iter_"
AUTO_LABELS = "data/class_labels.csv"


def build_parser():
    p = argparse.ArgumentParser(
        description="Class activation maps of a Caffe classifier (CAM on a GAP network, else Grad-CAM or another\n"
                    "of --method's gradient family): for each image a heat-map overlay with the\n"
                    "predicted class and its box (<stem>_cam.png), the top-k classes, probabilities and boxes\n"
                    "(<stem>_cam.json), optionally the raw maps (<stem>_cam.npy, float32 K×h×w) and a gallery;\n"
                    "for folders and list files also index.html, a page to browse them (filters, maps, boxes).\n"
                    "Images that cannot be read are reported and skipped; the exit status is then 1.",
        epilog="INPUT: image files, folders (searched recursively) or list files (.txt: `path label` per line).\n\n"
               "examples:\n"
               "  scripts/cam.py --auto photo.jpg                     (what `make cam IMAGE=photo.jpg` runs)\n"
               "  scripts/cam.py --model prototxt/demo_deploy.prototxt --weights snapshots/demo/demo_iter_600"
               ".caffemodel \\\n      --labels data/demo/class_labels.csv --top-k 3 --gallery results/cam/gallery.png"
               " data/demo/images\n"
               "  scripts/cam.py ... --eval-boxes data/demo/boxes.csv --thresholds 0.1:0.5:0.05 data/demo/val.txt\n"
               "  scripts/cam.py --model vgg16_deploy.prototxt --weights vgg16.caffemodel --method gradcam++ "
               "--layer conv5_3 photo.jpg",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders or list files")
    add_model_args(p)
    p.add_argument("--auto", action="store_true",
                   help=f"use {AUTO_MODEL}, the newest {AUTO_SNAPSHOTS}/{AUTO_PREFIX}N.caffemodel and {AUTO_LABELS} "
                        "(each unless given)")
    p.add_argument("--top-k", type=int, default=1, help="classes to map per image, in rank order (default 1)")
    p.add_argument("--out", default="results/cam", help="output folder (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity in the overlay (default %(default)s)")
    p.add_argument("--save-maps", action="store_true", help="also write <stem>_cam.npy (raw maps, feature size)")
    p.add_argument("--gallery", metavar="PATH", help="write a contact sheet of all overlays to PATH (.png)")
    p.add_argument("--eval-boxes", metavar="BOXES_CSV",
                   help="score localization against boxes.csv (`path x1 y1 x2 y2`, x2/y2 exclusive); needs "
                        "labelled inputs (a list file)")
    p.add_argument("--eval-json", metavar="PATH", help="write the localization scores to PATH")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="write OUT/index.html, a page to browse the results in a browser from file:// (default: on "
                        "when an INPUT is a folder or a list file)")
    return p


def newest_snapshot(folder, prefix):
    found = []
    for f in Path(folder).glob(f"{prefix}*.caffemodel"):
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.caffemodel", f.name)
        if m:
            found.append((int(m.group(1)), f))
    return max(found)[1] if found else None


def resolve_auto(args):
    """Fill --model/--weights/--labels from the project's layout (relative to the current folder, the project root
    under `make`); say what to run when something is missing."""
    if args.model is None:
        args.model = Path(AUTO_MODEL)
        if not args.model.exists():
            raise CaffeCamError(f"{AUTO_MODEL} not found: run `make prototxt` first")
    if args.weights is None:
        folder = Path(AUTO_SNAPSHOTS)
        args.weights = newest_snapshot(folder, AUTO_PREFIX)
        if args.weights is None:
            raise CaffeCamError(f"no snapshot in {AUTO_SNAPSHOTS}/ ({AUTO_PREFIX}N.caffemodel): run `make train` "
                                "first (or pass --weights)")
        print(f"using the newest snapshot: {args.weights}")
    if args.labels is None:
        args.labels = Path(AUTO_LABELS)
        if not args.labels.exists():
            raise CaffeCamError(f"{AUTO_LABELS} not found: run `make data` first (or pass --labels)")
    if not args.inputs:
        raise CaffeCamError("no image given: run `make cam IMAGE=path/to/image.jpg` (a file, a folder or a list)")


@main_guard
def main(argv=None):
    rank_zero_speaks()  # under torchrun: an option error once, not once per rank
    args = build_parser().parse_args(argv)
    if args.auto:
        resolve_auto(args)
    check_model_args(args, " (or --auto)")
    from caffecam.allocator import keep_freed_memory
    from caffecam.cam.localize import parse_thresholds, read_boxes
    from caffecam.cam.pipeline import model_from_args, report_localization, run_cam
    from caffecam.cam.report import ReportWriter
    from caffecam.cam.shards import from_group
    from caffecam.data.images import LIST_EXTS, collect_inputs
    from caffecam.train import distributed
    keep_freed_memory()
    if not args.inputs:
        raise CaffeCamError("no INPUT given: name image files, folders or list files")
    if not 0.0 <= args.alpha <= 1.0:
        raise CaffeCamError(f"--alpha {args.alpha}: must lie in [0, 1]")
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else [args.box_threshold]
    items = collect_inputs(args.inputs, args.root)
    if not items:
        raise CaffeCamError(f"no images found in {' '.join(args.inputs)}")
    for option, path in (("--gallery", args.gallery), ("--eval-json", args.eval_json)):
        if path and Path(path).is_dir():
            raise CaffeCamError(f"{option} {path}: is a folder; give a file name")
    if args.eval_json and not args.eval_boxes:
        raise CaffeCamError("--eval-json needs --eval-boxes BOXES_CSV (the scores it would hold)")
    boxes = read_boxes(args.eval_boxes, args.root) if args.eval_boxes else None
    if boxes is not None and not any(it.label is not None for it in items):
        raise CaffeCamError("--eval-boxes needs the true classes: give a list file (`path label` per line) as INPUT")
    shard = from_group(distributed.join(args.cpu))  # under torchrun: this process's share of the inputs
    args.no_progress |= bool(shard and shard.rank)
    model = model_from_args(args, shard and shard.device)
    if args.top_k > model.num_classes:
        raise CaffeCamError(f"--top-k {args.top_k}: the net has only {model.num_classes} classes")
    if args.report is None:
        args.report = any(Path(i).is_dir() or Path(i).suffix.lower() in LIST_EXTS for i in args.inputs)
    report = None
    if args.report:
        info = {"model": args.model, "weights": args.weights, "inputs": " ".join(map(str, args.inputs)),
                "method": f"{model.title} of {model.layers.describe()}"}
        more = f" and {len(args.inputs) - 1} more" if len(args.inputs) > 1 else ""
        report = ReportWriter(args.out, model.labels, args.box_threshold, args.alpha, args.top_k, boxes,
                              title=f"{model.title} report: {Path(args.inputs[0]).name}{more}",
                              info={k: str(v) for k, v in info.items()})
    if model.note:
        print(model.note)
    print(f"{model.title} of {model.layers.describe()} on {model.device} ({model.precision}) "
          f"for {len(items)} image(s)")
    result = run_cam(model, items, args.out, top_k=args.top_k, alpha=args.alpha, box_threshold=args.box_threshold,
                     save_maps=args.save_maps, gallery=args.gallery, batch_size=args.batch_size, workers=args.workers,
                     boxes=boxes, thresholds=thresholds, max_pixels=args.max_pixels, progress=not args.no_progress,
                     report=report, shard=shard)
    if result is None:
        return  # another rank: its files are written, rank 0 writes the rest
    done = len(result["records"])
    print(f"wrote {done} result(s) to {args.out}/ (<stem>_cam.png, <stem>_cam.json"
          + (", <stem>_cam.npy)" if args.save_maps else ")"))
    if done == 1:
        top = result["records"][0]["top_k"][0]
        print(f"top-1: {top['class_name']} ({top['prob']:.1%}), box {top['box']}")
    if result["gallery"]:
        print(f"gallery: {result['gallery']}")
    if result["report"]:
        print(f"report: {result['report']} (open it in a browser)")
    summary = result["localization"]
    if summary is not None:
        report_localization(summary, args.eval_json)
    if result["failures"]:
        raise CaffeCamError(f"{len(result['failures'])} of {len(items)} image(s) failed (listed above)")


if __name__ == "__main__":
    main()
