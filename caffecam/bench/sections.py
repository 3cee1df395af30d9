"""The sections of `make bench`, in the order they run: a module without torch, so that scripts/bench.py lists them
in --help and checks --only before loading torch."""

SECTIONS = ("data", "peak", "memory", "train", "pipeline", "train_vs_caffe", "inference", "zoo", "scaling", "cam",
            "end_to_end", "loader", "report")
