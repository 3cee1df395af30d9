"""Generate the synthetic demo set: one small class-deciding object per cluttered image, with ground-truth boxes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from caffecam.data.demo import CLASSES, MAX_CLASSES, make_demo_set
from caffecam.errors import main_guard

EPILOG = f"""\
writes under --out (use it as the ImageData root_folder, with a trailing slash):
  images/NNNNN.jpg     the images
  train.txt, val.txt   "images/NNNNN.jpg label" lines, val stratified per class
  class_labels.csv     "id name" lines
  boxes.csv            "images/NNNNN.jpg x1 y1 x2 y2": the object's tight box in pixels, x2 and y2 exclusive

classes (the first --classes are used): {", ".join(name for name, _, _ in CLASSES)}
the same arguments always give the same files."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo", help="output folder (default: data/demo)")
    p.add_argument("--classes", type=int, default=5, help=f"number of classes, 2..{MAX_CLASSES} (default 5)")
    p.add_argument("--images", type=int, default=1200, help="number of images in all (default 1200)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in val.txt (default 0.2)")
    p.add_argument("--min-scale", type=float, default=0.15, help="smallest object side / image side (default 0.15)")
    p.add_argument("--max-scale", type=float, default=0.35, help="largest object side / image side (default 0.35)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    res = make_demo_set(args.out, args.classes, args.images, args.size, args.seed, args.val_fraction,
                        scale=(args.min_scale, args.max_scale), progress=not args.no_progress)
    print(f"wrote {res['n_train']} train + {res['n_val']} val images ({args.size}x{args.size}, "
          f"{args.classes} classes: {', '.join(res['class_names'])}) to {res['root']}")
    return 0


if __name__ == "__main__":
    main()
