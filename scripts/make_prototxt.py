"""Write the project's prototxt files (GoogLeNet-CAM full and demo nets and solvers) from caffecam.nets."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from caffecam.atomic import atomic_write_bytes
from caffecam.errors import CaffeCamError, main_guard
from caffecam.nets.prototxt_files import prototxt_files, render


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Generate prototxt/*.prototxt: GoogLeNet-CAM train_val (ImageData and LMDB), deploy and solver, "
        "and the small demo net's train_val, deploy and solver. Output is deterministic; edit caffecam/models.py "
        "to change a net, then rerun this script.")
    p.add_argument("--out", default="prototxt",
                   help="output folder (default: prototxt); solvers refer to their nets as <out>/<name>")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 listing the files in --out that differ from what would be generated")
    return p.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    files = {name: render(msg) for name, msg in prototxt_files(net_dir=args.out.rstrip("/")).items()}
    if args.check:
        stale = [name for name, text in files.items()
                 if not (out / name).is_file() or (out / name).read_text() != text]
        if stale:
            raise CaffeCamError(f"{out}: out of date: {', '.join(stale)}; run scripts/make_prototxt.py --out {out}")
        print(f"{out}: {len(files)} files up to date")
        return
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
        print(out / name)


if __name__ == "__main__":
    main()
