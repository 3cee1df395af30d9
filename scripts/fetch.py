"""Download pretrained weights and the MPII dataset (resumable, checksum-verified, optional unpacking)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from caffecam.data.fetch import SOURCES, fetch
from caffecam.errors import CaffeCamError, main_guard


def build_parser():
    names = "\n".join(f"  {n:24s} {s.note}" + (f" (sha1 {s.sha1[:10]}…)" if s.sha1 else "")
                      for n, s in SOURCES.items())
    p = argparse.ArgumentParser(
        description="Download named files. An interrupted download is resumed on the next run (from <file>.part);\n"
                    "a file already present (and verified, where a checksum is known) is skipped; a download\n"
                    "whose sha1 does not match is deleted and an existing file is never replaced.",
        epilog="sources:\n" + names + "\n\nexamples:\n  scripts/fetch.py bvlc_googlenet --dest weights\n"
               "  scripts/fetch.py mpii_annotations mpii_images --dest data/mpii --unpack",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME", choices=list(SOURCES), help="source name(s), listed below")
    p.add_argument("--dest", default=".", help="folder to download into (default: current folder)")
    p.add_argument("--unpack", action="store_true", help="unpack .zip / .tar.gz archives into --dest after download")
    p.add_argument("--mirror", metavar="BASE_URL",
                   help="fetch <BASE_URL>/<file name> instead of the official URL (a local or alternative copy)")
    p.add_argument("--retries", type=int, default=3, help="automatic resumes after a dropped connection (default 3)")
    p.add_argument("--retry-wait", type=float, default=2.0, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    if Path(args.dest).exists() and not Path(args.dest).is_dir():
        raise CaffeCamError(f"--dest {args.dest}: is a file; give the folder to download into")
    for name in dict.fromkeys(args.names):
        fetch(name, args.dest, unpack=args.unpack, progress=not args.no_progress, mirror=args.mirror,
              retries=args.retries, retry_wait=args.retry_wait)
    return 0


if __name__ == "__main__":
    main()
