# GoogLeNet-CAM toolkit. `make demo` and `make test` do all set-up on a fresh machine.
PY      := .venv/bin/python
STAMP   := .venv/.installed
SOLVER  ?= prototxt/googlenet_cam_solver.prototxt
WEIGHTS ?= weights/bvlc_googlenet.caffemodel
MPII    ?= data/mpii
IMAGE   ?=
TRAIN_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test lint prototxt demo demo-clean weights mpii data train cam curves bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check caffecam scripts tests

test: setup lint
	$(PY) -m pytest

prototxt: setup
	$(PY) scripts/make_prototxt.py --out prototxt

# wall time of the demo counts the set-up it had to do
demo:
	@start=$$(date +%s.%N); $(MAKE) --no-print-directory setup && $(PY) scripts/demo.py --started $$start $(DEMO_ARGS)

demo-clean:
	rm -rf data/demo snapshots/demo results/demo

weights: setup
	$(PY) scripts/fetch.py bvlc_googlenet --dest weights

mpii: setup
	$(PY) scripts/fetch.py mpii_annotations mpii_images --dest $(MPII) --unpack

data: setup
	$(PY) scripts/prepare_mpii.py --annotations $(MPII)/mpii_human_pose_v1_u12_2/mpii_human_pose_v1_u12_1.mat \
		--images $(MPII)/images --out data

train: setup
	$(PY) scripts/train.py --solver $(SOLVER) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(TRAIN_ARGS)

cam: setup
	@test -n "$(IMAGE)" || { echo "usage: make cam IMAGE=path/to/image_or_folder" >&2; exit 2; }
	$(PY) scripts/cam.py --auto $(IMAGE)

curves: setup
	$(PY) scripts/plot_curves.py

# OpenCV 4's DNN module (readNetFromCaffe, gone from OpenCV 5) is a peer of the bench only: its own environment.
# Real Caffe is a peer when CAFFE_REF names a build (source /work/caffe-ref/env.sh first).
.venv-cv4/.installed: requirements-bench-cv4.txt
	test -x .venv-cv4/bin/python || python3 -m venv .venv-cv4
	.venv-cv4/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-bench-cv4.txt
	touch $@

bench: setup .venv-cv4/.installed
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf .venv .venv-cv4 .pytest_cache .ruff_cache
