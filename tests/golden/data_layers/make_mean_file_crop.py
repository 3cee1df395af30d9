"""Record real BVLC Caffe's Data layer with a mean_file and a TEST-phase crop, and pycaffe's Transformer, for
tests/data/test_data_layers_vs_caffe.py and tests/data/test_net_input.py.

Run where `import caffe` works (here: source /work/caffe-ref/env.sh), after make_reference.py made leveldb/:

    $CAFFE_PYTHON tests/golden/data_layers/make_mean_file_crop.py

Writes into this folder:
  mean_12x14.binaryproto   a 3×12×14 mean image, every value distinct (1000·c + 20·h + w + 0.25)
  mean_file_crop.npz       data_layer/data|label: the Data layer over leveldb/ (12×14 images) with
                           transform_param { crop_size: 10 mean_file: mean_12x14.binaryproto scale: 0.5 } at TEST;
                           transformer/<case>: caffe.io.Transformer.preprocess of transformer/image (OpenCV's
                           H×W×3 B,G,R uint8) given as pycaffe gets it (caffe.io.load_image: R,G,B floats in [0, 1])
"""

import shutil
import tempfile
from pathlib import Path

import caffe
import caffe.io
import numpy as np
from caffe.proto import caffe_pb2

HERE = Path(__file__).resolve().parent


def main():
    out = {}
    c, h, w = np.meshgrid(np.arange(3), np.arange(12), np.arange(14), indexing="ij")
    mean = (1000 * c + 20 * h + w + 0.25).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=12, width=14)
    blob.data.extend(mean.ravel().tolist())
    (HERE / "mean_12x14.binaryproto").write_bytes(blob.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "leveldb"
        shutil.copytree(HERE / "leveldb", db)  # LevelDB writes its LOG and LOCK
        with open(Path(tmp) / "net.prototxt", "w") as f:
            f.write(f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
                transform_param {{ crop_size: 10 mean_file: "{HERE / 'mean_12x14.binaryproto'}" scale: 0.5 }}
                data_param {{ source: "{db}" batch_size: 2 backend: LEVELDB }} }}""")
        net = caffe.Net(str(Path(tmp) / "net.prototxt"), caffe.TEST)
        net.forward()
        out["data_layer/data"] = net.blobs["data"].data.copy()
        out["data_layer/label"] = net.blobs["label"].data.copy()
        del net

    bgr = np.random.default_rng(12).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out["transformer/image"] = bgr
    rgb01 = bgr[:, :, ::-1] / 255.0  # what caffe.io.load_image returns (skimage's img_as_float)
    cases = {  # name -> (channel_swap, raw_scale, mean, input_scale)
        "bvlc": ((2, 1, 0), 255.0, np.array([104.0, 117.0, 123.0]), None),
        "rgb_unit": (None, 1.0, np.array([0.485, 0.456, 0.406]), 1 / 0.225),
        "mobilenet": ((2, 1, 0), 255.0, np.array([103.94, 116.78, 123.68]), 0.017),
    }
    for name, (swap, raw_scale, mean_values, input_scale) in cases.items():
        t = caffe.io.Transformer({"data": (1, 3, 6, 5)})
        t.set_transpose("data", (2, 0, 1))
        if swap:
            t.set_channel_swap("data", swap)
        t.set_raw_scale("data", raw_scale)
        t.set_mean("data", mean_values)
        if input_scale:
            t.set_input_scale("data", input_scale)
        out[f"transformer/{name}"] = t.preprocess("data", rgb01)
    np.savez_compressed(HERE / "mean_file_crop.npz", **out)
    print(f"wrote {HERE / 'mean_file_crop.npz'}: {len(out)} arrays")


if __name__ == "__main__":
    main()
