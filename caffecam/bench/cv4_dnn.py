"""OpenCV 4's DNN module running a Caffe model, for `make bench`: run by the bench-only environment's Python
(.venv-cv4, requirements-bench-cv4.txt: opencv-python-headless 4, since the project itself uses OpenCV 5, which
dropped readNetFromCaffe), as a subprocess. It imports nothing of caffecam.

    python cv4_dnn.py PROTOTXT CAFFEMODEL INPUT.npy OUTPUT.npy [--blob prob] [--rounds 5] [--budget 30] [--serve]

Loads the net as a user would (cv2.dnn.readNetFromCaffe), feeds the N×C×H×W float32 input, writes the output
blob of the first forward (for the bench to compare with ours before timing), then times forwards (median over
rounds, at least one, no new round past the budget) and prints one JSON line: load_s, forward_s, images_per_s,
threads, opencv version. With --serve it prints that line after the first forward instead (forward_s null), then
runs one forward per line read from stdin and answers each with its seconds, until stdin closes: the bench
interleaves these forwards with its own, round by round.
"""

import argparse
import json
import statistics
import sys
import time

import cv2
import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prototxt")
    p.add_argument("caffemodel")
    p.add_argument("input", help="N×C×H×W float32 .npy")
    p.add_argument("output", help=".npy written with the first forward's output blob")
    p.add_argument("--blob", default="", help="output blob (default: the net's last)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=float, default=30.0, help="seconds the timed rounds may take")
    p.add_argument("--serve", action="store_true", help="one forward per stdin line, its seconds on stdout")
    args = p.parse_args()
    start = time.perf_counter()
    net = cv2.dnn.readNetFromCaffe(args.prototxt, args.caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    load_s = time.perf_counter() - start
    x = np.load(args.input).astype(np.float32)

    def forward():
        net.setInput(x)
        return net.forward(args.blob) if args.blob else net.forward()

    first = time.perf_counter()
    np.save(args.output, forward())
    first_s = time.perf_counter() - first
    if args.serve:
        print(json.dumps({"load_s": load_s, "first_forward_s": first_s, "forward_s": None, "images_per_s": None,
                          "threads": cv2.getNumThreads(), "opencv": cv2.__version__}), flush=True)
        for _ in sys.stdin:
            t = time.perf_counter()
            forward()
            print(time.perf_counter() - t, flush=True)
        return
    times, begin = [], time.perf_counter()
    for _ in range(max(1, args.rounds)):
        t = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - begin + times[-1] > args.budget:
            break
    seconds = statistics.median(times)
    print(json.dumps({"load_s": load_s, "first_forward_s": first_s, "forward_s": seconds,
                      "images_per_s": len(x) / seconds, "rounds": len(times), "threads": cv2.getNumThreads(),
                      "opencv": cv2.__version__}))


if __name__ == "__main__":
    main()
