"""Record what real BVLC Caffe's data layers give, for tests/data/test_data_layers_vs_caffe.py.

Run where `import caffe` works (BVLC master with pycaffe; here: source /work/caffe-ref/env.sh):

    $CAFFE_PYTHON tests/golden/data_layers/make_reference.py

Writes into this folder (the tests need neither Caffe nor this script):
  img0.ppm img1.ppm       small seeded colour images (binary PPM, which OpenCV reads losslessly)
  mean.binaryproto        a seeded 3×12×12 mean image
  a.h5 b.h5               HDF5Data inputs, written by Caffe's own HDF5Output (datasets data, label)
  leveldb/                a LevelDB of Datum records written by Caffe's convert_imageset (--backend leveldb)
  data_layers.npz         the tops Caffe's layers gave: window/<case>/data|label, hdf5/<i>/data|label,
                          memory/<i>/data|label, leveldb/data|label, hdf5_output/data|label
Nothing here draws from Caffe's RNG in a way the tests depend on: WindowData cases have one foreground and one
background window (sampling with replacement always picks them); with mirror, each item is compared against both
orientations.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import caffe
import numpy as np
from caffe.proto import caffe_pb2

HERE = Path(__file__).resolve().parent
IMAGES = {"img0.ppm": (23, 31), "img1.ppm": (17, 20)}  # name -> (height, width)
WINDOW_CASES = {  # name -> (window_data_param extra, transform_param, windows of img0 (class overlap x1 y1 x2 y2))
    "warp": ("", "crop_size: 8", ["3 0.9 4 5 20 15", "0 0.1 0 0 9 9"]),
    "context_pad": ("context_pad: 2", "crop_size: 10 mean_value: 100 mean_value: 110 mean_value: 120",
                    ["2 0.8 1 0 14 9", "0 0.2 20 10 30 22"]),
    "square": ("crop_mode: 'square' context_pad: 1 scale: 0.5", "crop_size: 9 mean_value: 50",
               ["1 0.7 2 3 28 8", "0 0.0 0 12 6 22"]),
    "mean_file": ("context_pad: 1", "crop_size: 8 mean_file: '{mean}'", ["4 1.0 6 6 16 16", "0 0.3 1 1 5 5"]),
    "mirror": ("context_pad: 3", "crop_size: 10 mirror: true", ["5 0.6 0 2 12 20", "0 0.4 25 0 30 6"]),
}


def write_ppm(path, img):
    h, w, _ = img.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(img[:, :, ::-1].tobytes())  # PPM is RGB; the arrays here are BGR as OpenCV loads them


def net_from(text, phase=caffe.TEST):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    try:
        return caffe.Net(f.name, phase)
    finally:
        os.unlink(f.name)


def tops(net, names):
    net.forward()
    return {n: net.blobs[n].data.copy() for n in names}


def main():
    rng = np.random.default_rng(11)
    out = {}
    for name, (h, w) in IMAGES.items():
        write_ppm(HERE / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mean = caffe_pb2.BlobProto()
    mean.shape.dim.extend([1, 3, 12, 12])
    mean.data.extend(rng.uniform(0, 255, 3 * 12 * 12).astype(np.float32).tolist())
    (HERE / "mean.binaryproto").write_bytes(mean.SerializeToString())

    for case, (extra, transform, windows) in WINDOW_CASES.items():
        window_file = HERE / f"windows_{case}.txt"
        window_file.write_text(f"# 0\nimg0.ppm\n3 23 31\n{len(windows)}\n" + "\n".join(windows) + "\n")
        net = net_from(f"""layer {{ name: "w" type: "WindowData" top: "data" top: "label"
            window_data_param {{ source: "{window_file}" batch_size: 6 fg_fraction: 0.5 root_folder: "{HERE}/"
                                 {extra} }}
            transform_param {{ {transform.format(mean=HERE / 'mean.binaryproto')} }} }}""")
        for k, v in tops(net, ["data", "label"]).items():
            out[f"window/{case}/{k}"] = v

    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in (("a.h5", 3), ("b.h5", 4)):
            data = rng.standard_normal((rows, 2, 3)).astype(np.float32)
            labels = np.arange(rows, dtype=np.float32) + (10 if name == "b.h5" else 0)
            net = net_from(f"""layer {{ name: "m" type: "MemoryData" top: "data" top: "label"
                memory_data_param {{ batch_size: {rows} channels: 2 height: 3 width: 1 }} }}
                layer {{ name: "o" type: "HDF5Output" bottom: "data" bottom: "label"
                hdf5_output_param {{ file_name: "{HERE / name}" }} }}""")
            net.set_input_arrays(data.reshape(rows, 2, 3, 1), labels)
            net.forward()
            del net  # closes the file
        listing = Path(tmp) / "list.txt"
        listing.write_text(f"{HERE / 'a.h5'}\n{HERE / 'b.h5'}\n")
        net = net_from(f"""layer {{ name: "h" type: "HDF5Data" top: "data" top: "label"
            hdf5_data_param {{ source: "{listing}" batch_size: 3 }} }}""")
        for i in range(4):
            for k, v in tops(net, ["data", "label"]).items():
                out[f"hdf5/{i}/{k}"] = v

        out_h5 = Path(tmp) / "out.h5"
        net = net_from(f"""layer {{ name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param {{
            shape {{ dim: 2 dim: 3 dim: 4 }} shape {{ dim: 2 }} data_filler {{ type: "constant" value: 0.5 }}
            data_filler {{ type: "constant" value: 7 }} }} }}
            layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y"
                     hdf5_output_param {{ file_name: "{out_h5}" }} }}""")
        net.forward()
        del net
        # Read back with Caffe's HDF5Data (no h5py here): the datasets' shapes are what Caffe wrote.
        (Path(tmp) / "out.txt").write_text(f"{out_h5}\n")
        net = net_from(f"""layer {{ name: "h" type: "HDF5Data" top: "data" top: "label"
            hdf5_data_param {{ source: "{Path(tmp) / 'out.txt'}" batch_size: 2 }} }}""")
        for k, v in tops(net, ["data", "label"]).items():
            out[f"hdf5_output/{k}"] = v

        data = rng.standard_normal((4, 1, 2, 3)).astype(np.float32)
        net = net_from("""layer { name: "m" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }""")
        net.set_input_arrays(data, np.array([4, 3, 2, 1], np.float32))
        for i in range(3):
            for k, v in tops(net, ["data", "label"]).items():
                out[f"memory/{i}/{k}"] = v
        out["memory/input"] = data

        shutil.rmtree(HERE / "leveldb", ignore_errors=True)
        (Path(tmp) / "images.txt").write_text("img1.ppm 3\nimg0.ppm 5\n")
        subprocess.run(["convert_imageset", "--backend=leveldb", "--resize_height=12", "--resize_width=14",
                        f"{HERE}/", str(Path(tmp) / "images.txt"), str(HERE / "leveldb")], check=True)
        net = net_from(f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
            transform_param {{ crop_size: 10 mean_value: 90 mean_value: 100 mean_value: 110 scale: 0.5 }}
            data_param {{ source: "{HERE / 'leveldb'}" batch_size: 2 backend: LEVELDB }} }}""")
        for k, v in tops(net, ["data", "label"]).items():
            out[f"leveldb/{k}"] = v
    np.savez_compressed(HERE / "data_layers.npz", **out)
    print(f"wrote {HERE / 'data_layers.npz'}: {len(out)} arrays")


if __name__ == "__main__":
    main()
