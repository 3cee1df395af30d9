"""Turn MPII Human Pose activity annotations into Caffe ImageData lists (and optionally Caffe LMDBs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from caffecam.data.mpii import prepare
from caffecam.errors import CaffeCamError, main_guard

EPILOG = """\
outputs (in --out):
  class_labels.csv         one "id name" per line, e.g. "9 music_playing"
  train.txt, val.txt       "relpath label" lines, paths relative to --images (train.txt shuffled, val.txt sorted)
  train_lmdb/, val_lmdb/   with --lmdb: Caffe Datum records, keys %08d_<relpath>, images resized to SxS, JPEG

a train_val prototxt can read either form:
  layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
          transform_param { mirror: true crop_size: 224 mean_value: 104 mean_value: 117 mean_value: 123 }
          image_data_param { source: "data/train.txt" root_folder: "data/mpii/images/"
                             new_height: 256 new_width: 256 shuffle: true batch_size: 32 } }
  layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
          transform_param { mirror: true crop_size: 224 mean_value: 104 mean_value: 117 mean_value: 123 }
          data_param { source: "data/train_lmdb" backend: LMDB batch_size: 32 } }
  (root_folder is joined to each path by plain concatenation: keep its trailing slash)

the split keeps every video (vididx) on one side, is stratified by class and is the same for the same --seed.
MPII is for research use only."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, metavar="FILE.mat",
                   help="mpii_human_pose_v1_u12_1.mat (from mpii_human_pose_v1_u12_2.zip)")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder holding MPII's *.jpg (root_folder)")
    p.add_argument("--out", default="data", help="output folder (default: data)")
    p.add_argument("--classes", type=int, default=14, metavar="N",
                   help="use the N most frequent activity categories (ties by name; default 14)")
    p.add_argument("--class-list", metavar="FILE",
                   help="use these categories instead: one name (or 'id name') a line; overrides --classes")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of train.txt's order (default 0)")
    p.add_argument("--lmdb", action="store_true", help="also write train_lmdb/ and val_lmdb/ (Caffe Datum, JPEG)")
    p.add_argument("--resize", type=int, default=256, metavar="S", help="LMDB images are resized to SxS (default 256)")
    p.add_argument("--workers", type=int, default=None, help="threads decoding images for --lmdb (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resize < 1:
        raise CaffeCamError(f"--resize must be a positive size, got {args.resize}")
    if args.workers is not None and args.workers < 1:
        raise CaffeCamError(f"--workers must be at least 1 (or left out for all cores), got {args.workers}")
    prepare(args.annotations, args.images, args.out, n_classes=args.classes, class_list=args.class_list,
            val_fraction=args.val_fraction, seed=args.seed, lmdb=args.lmdb, resize=args.resize,
            workers=args.workers, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    main()
