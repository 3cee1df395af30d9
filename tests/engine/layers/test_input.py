"""The data family in the engine: DummyData, MemoryData, HDF5Output, Python, and a net whose tops they make."""

import h5py
import numpy as np
import pytest
import torch

from caffecam.engine.net import Net
from caffecam.engine.prototxt import parse_text
from caffecam.errors import CaffeCamError
from caffecam.proto import caffe_pb2
from tests.engine.layers.helpers import build, close, rand


def fwd(layer, *xs):
    with torch.no_grad():
        return [t.numpy() for t in layer(*xs)]


def test_dummy_data_shapes_and_constant_fillers():
    layer = build("name: 'd' type: 'DummyData' top: 'a' top: 'b' dummy_data_param { shape { dim: 2 dim: 3 } "
                  "shape { dim: 4 } data_filler { type: 'constant' value: 1.5 } "
                  "data_filler { type: 'constant' value: -2 } }", [])
    a, b = fwd(layer)
    assert a.shape == (2, 3) and b.shape == (4,)
    assert (a == 1.5).all() and (b == -2).all()
    # Legacy dims: num given once, the others per top; no filler = constant 0.
    layer = build("name: 'd' type: 'DummyData' top: 'a' top: 'b' dummy_data_param { num: 5 channels: 1 channels: 2 "
                  "height: 3 width: 4 width: 1 }", [])
    assert layer.top_shapes == [(5, 1, 3, 4), (5, 2, 3, 1)]
    assert all((t == 0).all() for t in fwd(layer))


def test_dummy_data_random_fillers_draw_anew_each_forward():
    layer = build("name: 'd' type: 'DummyData' top: 'a' dummy_data_param { shape { dim: 200 dim: 50 } "
                  "data_filler { type: 'gaussian' mean: 3 std: 2 } }", [])
    first, second = fwd(layer)[0], fwd(layer)[0]
    assert not np.array_equal(first, second)
    for x in (first, second):  # 10 000 draws: mean within 5 standard errors, std within 5 %
        assert abs(x.mean() - 3) < 5 * 2 / 100 and abs(x.std() - 2) < 0.1
    u = fwd(build("name: 'd' type: 'DummyData' top: 'a' dummy_data_param { shape { dim: 1000 } "
                  "data_filler { type: 'uniform' min: -1 max: 4 } }", []))[0]
    assert u.min() >= -1 and u.max() <= 4 and u.min() < -0.9 and u.max() > 3.9


@pytest.mark.parametrize("param,needle", [
    ("shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1", "either shape or num"),
    ("num: 2 num: 3 num: 4 channels: 1 height: 1 width: 1", "'num' once or once per top"),
    ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "'shape' once or once per top"),
    ("shape { dim: 2 } data_filler { } data_filler { } data_filler { }", "3 data_filler entries for 2 tops"),
    ("shape { dim: 2 } data_filler { type: 'nonsense' }", "unknown filler type 'nonsense'"),
])
def test_dummy_data_set_up_errors(param, needle):
    with pytest.raises(CaffeCamError, match=rf"'dd'.*{needle}"):
        build(f"name: 'dd' type: 'DummyData' top: 'a' top: 'b' dummy_data_param {{ {param} }}", [])


MEMORY = "name: 'm' type: 'MemoryData' top: 'data' top: 'label' " \
         "memory_data_param { batch_size: 2 channels: 3 height: 4 width: 5 }"


def test_memory_data_walks_the_arrays_batch_by_batch_and_wraps():
    layer = build(MEMORY, [])
    assert layer.top_shapes == [(2, 3, 4, 5), (2,)]
    data = rand(6, 3, 4, 5, seed=1).astype(np.float32)
    labels = np.arange(6, dtype=np.float32)
    layer.set_input_arrays(data, labels)
    for start in (0, 2, 4, 0, 2):
        x, y = fwd(layer)
        close(x, data[start:start + 2])
        # Caffe's MemoryDataLayer reshapes the label top to batch×1×1×1 at each forward.
        assert y.shape == (2, 1, 1, 1) and y.ravel().tolist() == [start, start + 1]


@pytest.mark.parametrize("data,labels,needle", [
    (np.zeros((4, 3, 4, 5), np.float64), np.zeros(4, np.float32), "float32"),
    (np.zeros((4, 3, 5, 4), np.float32), np.zeros(4, np.float32), r"N×3×4×5"),
    (np.zeros((3, 3, 4, 5), np.float32), np.zeros(3, np.float32), "multiple of batch_size 2"),
    (np.zeros((4, 3, 4, 5), np.float32), np.zeros(2, np.float32), "4 data rows and 2 labels"),
    (np.zeros((4, 3, 4, 5), np.float32), np.zeros((4, 2), np.float32), r"labels array is \(4, 2\)"),
])
def test_memory_data_rejects_arrays_pycaffe_rejects(data, labels, needle):
    with pytest.raises(CaffeCamError, match=rf"'m' \(MemoryData\).*{needle}"):
        build(MEMORY, []).set_input_arrays(data, labels)


def test_memory_data_needs_arrays_and_all_sizes():
    with pytest.raises(CaffeCamError, match="call set_input_arrays"):
        fwd(build(MEMORY, []))
    with pytest.raises(CaffeCamError, match="'m'.*must all be given and positive"):
        build(MEMORY.replace("height: 4 ", ""), [])


def test_a_net_of_memory_data_and_dummy_data_runs_without_inputs():
    net = Net(parse_text("""
        layer { name: "m" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
        layer { name: "w" type: "DummyData" top: "w" dummy_data_param { shape { dim: 2 dim: 1 dim: 2 dim: 2 }
                data_filler { type: "constant" value: 10 } } }
        layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "w" top: "sum" }
    """, caffe_pb2.NetParameter), caffe_pb2.TEST)
    assert net.input_blobs == [] and net.blob_shapes["sum"] == (2, 1, 2, 2)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.zeros(4, np.float32))
    with torch.no_grad():
        assert np.array_equal(net({})["sum"].numpy(), data[:2] + 10)
        assert np.array_equal(net({})["sum"].numpy(), data[2:] + 10)
    with pytest.raises(CaffeCamError, match="first layer"):
        Net(parse_text('layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 } } }',
                       caffe_pb2.NetParameter)).set_input_arrays(data, np.zeros(4, np.float32))


def test_hdf5_output_writes_data_and_label_as_legacy_4d(tmp_path):
    out = tmp_path / "out.h5"
    layer = build(f"name: 'o' type: 'HDF5Output' bottom: 'a' bottom: 'b' hdf5_output_param {{ file_name: '{out}' }}",
                  [(3, 2, 5), (3,)])
    with h5py.File(out, "r") as f:  # created (empty) at set-up, as Caffe does
        assert list(f.keys()) == []
    a, b = rand(3, 2, 5, seed=2), np.array([1.0, 2.0, 3.0])
    assert fwd(layer, torch.from_numpy(a), torch.from_numpy(b)) == []
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        assert f["data"].dtype == np.float32 and f["data"].shape == (3, 2, 5, 1)
        close(f["data"][:], a.reshape(3, 2, 5, 1).astype(np.float32))
        assert f["label"].shape == (3, 1, 1, 1) and f["label"][:].ravel().tolist() == [1, 2, 3]


@pytest.mark.parametrize("bottoms,needle", [
    ([(3, 2)], "expects 2 bottom blobs"),
    ([(3, 2), (4,)], "different num"),
    ([(1, 1, 1, 1, 2), (1,)], "more than 4 axes"),
])
def test_hdf5_output_set_up_errors(tmp_path, bottoms, needle):
    with pytest.raises(CaffeCamError, match=rf"'o' \(HDF5Output\).*{needle}"):
        build(f"name: 'o' type: 'HDF5Output' hdf5_output_param {{ file_name: '{tmp_path}/o.h5' }}", bottoms)
    with pytest.raises(CaffeCamError, match=r"cannot create .*/no/such/o.h5"):
        build(f"name: 'o' type: 'HDF5Output' hdf5_output_param {{ file_name: '{tmp_path}/no/such/o.h5' }}",
              [(1,), (1,)])


def test_python_layer_is_one_line_naming_it():
    with pytest.raises(CaffeCamError, match=r"layer 'py' \(Python\): Python layers run user code \(module 'pyloss', "
                                            r"class 'EuclideanLossLayer'\).*not supported"):
        build("name: 'py' type: 'Python' bottom: 'a' top: 'b' "
              "python_param { module: 'pyloss' layer: 'EuclideanLossLayer' }", [(2, 3)])
