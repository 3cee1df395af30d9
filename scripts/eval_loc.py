"""Localization scores of a CAM net, as the CAM paper reports them: top-1 classification accuracy, top-1
localization accuracy (right class and IoU >= 0.5) and ground-truth-known localization accuracy."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

# Only what parsing needs is imported here (no torch): --help and option errors come at once. The rest in main().
from caffecam.cam.options import add_model_args, check_model_args
from caffecam.errors import CaffeCamError, main_guard, rank_zero_speaks


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__ + "\nThe box of a map is the box around its largest region above --box-threshold × its "
                              "maximum;\n--thresholds sweeps that fraction.",
        epilog="example:\n  scripts/eval_loc.py --model prototxt/demo_deploy.prototxt --weights "
               "snapshots/demo/demo_iter_600.caffemodel \\\n      --labels data/demo/class_labels.csv --list "
               "data/demo/val.txt --root data/demo --boxes data/demo/boxes.csv \\\n      --thresholds 0.1:0.5:0.05 "
               "--json results/demo/loc.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", required=True, help="ImageData list file (`path label` per line)")
    p.add_argument("--boxes", required=True, help="boxes.csv: `path x1 y1 x2 y2` per line (x2, y2 exclusive)")
    p.add_argument("--json", metavar="PATH", help="also write the scores to PATH as JSON")
    add_model_args(p)
    return p


@main_guard
def main(argv=None):
    rank_zero_speaks()  # under torchrun: an option error once, not once per rank
    args = build_parser().parse_args(argv)
    check_model_args(args)
    from caffecam.allocator import keep_freed_memory
    from caffecam.cam.localize import parse_thresholds, read_boxes
    from caffecam.cam.pipeline import evaluate_localization, model_from_args, report_localization
    from caffecam.cam.shards import from_group
    from caffecam.data.images import read_list_file
    from caffecam.train import distributed
    keep_freed_memory()
    if args.json and Path(args.json).is_dir():
        raise CaffeCamError(f"--json {args.json}: is a folder; give a file name such as {Path(args.json) / 'loc.json'}")
    thresholds = parse_thresholds(args.thresholds) if args.thresholds else [args.box_threshold]
    items = read_list_file(args.list, args.root)
    if not items:
        raise CaffeCamError(f"{args.list}: no images listed")
    boxes = read_boxes(args.boxes, args.root)
    shard = from_group(distributed.join(args.cpu))  # under torchrun: this process's share of the inputs
    args.no_progress |= bool(shard and shard.rank)
    model = model_from_args(args, shard and shard.device)
    if model.note:
        print(model.note)
    print(f"localization of {model.title} of {model.layers.describe()} over {len(items)} image(s)")
    summary = evaluate_localization(model, items, boxes, thresholds, main_threshold=args.box_threshold,
                                    batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels,
                                    progress=not args.no_progress, shard=shard)
    if summary is None:
        return  # another rank: rank 0 prints the scores
    report_localization(summary, args.json, f"no box in {args.boxes}")
    if args.json:
        print(f"scores written to {args.json}")
    if summary["failures"]:
        raise CaffeCamError(f"{len(summary['failures'])} image(s) could not be read (listed above); the scores "
                            "leave them out")


if __name__ == "__main__":
    main()
