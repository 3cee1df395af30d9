"""scripts/make_cam_net.py and nets/cam_surgery.py: the seed's GoogLeNet-CAM rebuilt from BVLC's GoogLeNet layer for
layer, the CAM authors' VGG16-CAM and AlexNet-CAM shapes, ResNet-50, and one clear line for each bad cut or head."""

import copy
import json
from pathlib import Path

import pytest

from caffecam.engine.net import TEST, TRAIN, Net
from caffecam.engine.prototxt import read_net, read_solver
from caffecam.proto import caffe_pb2
from scripts import make_cam_net

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "tests" / "zoo"
BVLC_TRAIN_VAL = Path(__file__).with_name("fixtures") / "bvlc_googlenet_train_val.prototxt"
SEED = ROOT / "prototxt"
SEED_DATA = ["--train-list", "data/train.txt", "--val-list", "data/val.txt", "--root-folder", "data/mpii/images/"]


def make(tmp_path, base, cut, classes, *more, prefix="cam"):
    make_cam_net.main(["--base", str(base), "--cut", cut, "--classes", str(classes), "--out", str(tmp_path),
                       "--prefix", prefix, *more])
    return {kind: tmp_path / f"{prefix}_{kind}.prototxt" for kind in ("train_val", "deploy", "solver")}


def assert_same_net(ours, seed):
    assert ours.name == seed.name
    assert [lp.name for lp in ours.layer] == [lp.name for lp in seed.layer]
    for a, b in zip(ours.layer, seed.layer):
        assert a == b, a.name


def without_xavier_std(net):
    net = copy.deepcopy(net)
    for lp in net.layer:
        for param in (lp.convolution_param, lp.inner_product_param):
            if param.weight_filler.type == "xavier":
                param.weight_filler.ClearField("std")
    return net


def shapes(path, **kw):
    net = Net(read_net(path), TEST, meta=True, **kw)
    return ([(b, tuple(s)) for b, s in net.blob_shapes.items()],
            [(n, [tuple(p.shape) for p in ps]) for n, ps in net.params.items()])


def test_googlenet_cam_from_the_bvlc_deploy_is_the_seeds_net(tmp_path):
    files = make(tmp_path, ZOO / "bvlc_googlenet.prototxt", "inception_4e/output", 14, *SEED_DATA,
                 prefix="googlenet_cam")
    assert_same_net(read_net(files["train_val"]), read_net(SEED / "googlenet_cam_train_val.prototxt"))
    assert_same_net(read_net(files["deploy"]), read_net(SEED / "googlenet_cam_deploy.prototxt"))
    seed_solver = read_solver(SEED / "googlenet_cam_solver.prototxt")
    seed_solver.net = f"{tmp_path}/googlenet_cam_train_val.prototxt"  # the only path: --out
    assert read_solver(files["solver"]) == seed_solver
    lmdb = make(tmp_path / "lmdb", ZOO / "bvlc_googlenet.prototxt", "inception_4e/output", 14,
                "--lmdb", "data/train_lmdb", "data/val_lmdb")
    assert_same_net(read_net(lmdb["train_val"]), read_net(SEED / "googlenet_cam_train_val_lmdb.prototxt"))


def test_googlenet_cam_from_the_bvlc_train_val(tmp_path):
    """BVLC's train_val gives the same net but for the xavier fillers' `std`, which the seed copied from BVLC's
    deploy and Caffe's XavierFiller never reads (filler.hpp: scale = sqrt(3 / n), n from the fans): the seed's
    trunk is the deploy's."""
    files = make(tmp_path, BVLC_TRAIN_VAL, "inception_4e/output", 14, *SEED_DATA)
    ours, seed = read_net(files["train_val"]), read_net(SEED / "googlenet_cam_train_val.prototxt")
    assert ours != seed
    assert_same_net(without_xavier_std(ours), without_xavier_std(seed))
    assert_same_net(without_xavier_std(read_net(files["deploy"])),
                    without_xavier_std(read_net(SEED / "googlenet_cam_deploy.prototxt")))
    # Without data options the base's own LMDB data layers stay; the auxiliary classifiers go either way.
    own = read_net(make(tmp_path / "own", BVLC_TRAIN_VAL, "inception_4e/output", 14)["train_val"])
    base = read_net(BVLC_TRAIN_VAL)
    assert own.layer[0] == base.layer[0] and own.layer[1] == base.layer[1]
    names = [lp.name for lp in own.layer]
    assert not [n for n in names if n.startswith(("loss1/", "loss2/", "pool4", "inception_5"))]
    assert names[-7:] == ["CAM_conv", "CAM_relu", "CAM_pool", "CAM_fc_14", "loss3/loss3", "loss3/top-1",
                          "loss3/top-5"]


def test_the_cam_authors_googlenet_cam_differs_from_the_seeds_by_options(tmp_path):
    """The paper's ImageNet GoogLeNet-CAM (zhoubolei/CAM's train_val and solver) is the seed's surgery on BVLC's deploy
    with its classifier named CAM_fc, the net named GoogleNet, ImageNet LMDBs at batch 64/50 and its solver: every
    layer equal but TEST's data layer, which writes out `mirror: false` (the default) where ours leaves it unset."""
    fixtures = BVLC_TRAIN_VAL.parent
    theirs, solver = read_net(fixtures / "cam_googlenet_train_val.prototxt"), read_solver(
        fixtures / "cam_googlenet_solver.prototxt")
    files = make(tmp_path, ZOO / "bvlc_googlenet.prototxt", "inception_4e/output", 1000, "--fc-name", "CAM_fc",
                 "--name", "GoogleNet", "--lmdb", theirs.layer[0].data_param.source, theirs.layer[1].data_param.source,
                 "--batch", "64", "--test-batch", "50", "--base-lr", "0.001", "--stepsize", "40000", "--max-iter",
                 "160000", "--test-iter", "1000", "--test-interval", "3000", "--snapshot", "10000")
    ours = read_net(files["train_val"])
    assert theirs.layer[1].transform_param.HasField("mirror") and not ours.layer[1].transform_param.HasField("mirror")
    theirs.layer[1].transform_param.ClearField("mirror")
    assert_same_net(ours, theirs)
    fields = ("base_lr", "lr_policy", "gamma", "stepsize", "max_iter", "momentum", "weight_decay", "test_iter",
              "test_interval", "snapshot", "solver_mode")
    ours = read_solver(files["solver"])
    assert [getattr(ours, f) for f in fields] == [getattr(solver, f) for f in fields]


def test_vgg16_cam_has_the_cam_authors_shapes(tmp_path):
    """Cut after relu5_3 (pool5 dropped); --dropout and --fc-name give the authors' head names too."""
    files = make(tmp_path, ZOO / "places365_vgg16.prototxt", "conv5_3", 1000, "--dropout", "0.5", "--fc-name",
                 "CAM_fc", "--deploy-batch", "10", "--train-list", "t.txt", "--val-list", "v.txt")
    assert shapes(files["deploy"]) == shapes(ZOO / "cam_vgg16.prototxt")
    by_layer = make(tmp_path / "by_layer", ZOO / "places365_vgg16.prototxt", "relu5_3", 1000, "--dropout", "0.5",
                    "--fc-name", "CAM_fc", "--deploy-batch", "10", "--train-list", "t.txt", "--val-list", "v.txt")
    assert read_net(by_layer["deploy"]) == read_net(files["deploy"])
    deploy = read_net(files["deploy"])
    assert [lp.name for lp in deploy.layer if lp.bottom == ["conv5_3"]] == ["relu5_3", "CAM_conv"]


ALEXNET_CAM_HEAD = ["--head", "conv5:384:g2,pool5:max3s1,conv6:512:g2,conv7:512:g2", "--pool-name", "pool8_global",
                    "--dropout", "0.5", "--fc-name", "fc9"]


def test_alexnet_cam_has_the_cam_authors_shapes(tmp_path):
    """The authors' deploy_alexnetplusCAM_imagenet (their README's "AlexNet+-CAM") is CaffeNet (pool before norm;
    bvlc_alexnet has norm1 before pool1) through relu4, then a 384-wide conv5, pool5 MAX 3/1 (13×13 -> 11×11), conv6
    and conv7 (512, group 2) and an 11×11 AVE pool: cut at conv4 with that --head. Every blob and parameter shape
    (and name) is theirs."""
    files = make(tmp_path, ZOO / "bvlc_reference_caffenet.prototxt", "conv4", 1000, *ALEXNET_CAM_HEAD,
                 "--deploy-batch", "10", "--lmdb", "train_lmdb", "val_lmdb")
    theirs = shapes(ZOO / "cam_alexnet_imagenet.prototxt")
    assert dict(theirs[0])["conv7"] == (10, 512, 11, 11) and dict(theirs[1])["conv6"] == [(512, 192, 3, 3), (512,)]
    assert shapes(files["deploy"]) == theirs
    deploy = read_net(files["deploy"])
    ours, authors = {lp.name: lp for lp in deploy.layer}, {lp.name: lp for lp in read_net(
        ZOO / "cam_alexnet_imagenet.prototxt").layers}
    for name in ("conv5", "pool5", "conv6", "conv7", "pool8_global"):  # kernels, pads, strides, groups, fillers
        for field in ("convolution_param", "pooling_param"):
            assert getattr(ours[name], field) == getattr(authors[name], field), (name, field)
    assert [lp.name for lp in deploy.layer if lp.type == "ReLU"][-3:] == ["relu5", "relu6", "relu7"]
    by_relu = make(tmp_path / "relu4", ZOO / "bvlc_reference_caffenet.prototxt", "relu4", 1000, *ALEXNET_CAM_HEAD,
                   "--deploy-batch", "10", "--lmdb", "train_lmdb", "val_lmdb")
    assert read_net(by_relu["deploy"]) == deploy
    Net(read_net(files["train_val"]), TRAIN, meta=True)


BAD_HEADS = [
    ("conv5:384:g2,pool5:max3s1", "--head conv5:384:g2,pool5:max3s1: ends in the pooling 'pool5'; end with a "
                                  "convolution"),
    ("conv5:384:g5", "--head conv5:384:g5: item 'conv5:384:g5': the outputs must be a positive multiple of the group"),
    ("conv5:x", "--head conv5:x: item 'conv5:x' is not NAME:OUTPUTS[:gGROUP] or NAME:maxK[sS] / NAME:aveK[sS]"),
    ("conv5:8,", "--head conv5:8,: item '' is not NAME:OUTPUTS[:gGROUP]"),
    ("p:max0,c:8", "--head p:max0,c:8: item 'p:max0': kernel and stride must be positive"),
    ("conv5:8,relu5:max2,c:8", "--head conv5:8,relu5:max2,c:8: the name 'relu5' comes twice"),
    ("conv3:8", "the head's 'conv3' is already a layer or blob of the kept net"),
    ("a:6:g3,b:8:g4", "--head item 'b': its 6 input channels do not divide into 4 groups; use :g1 or a group that "
                      "divides 6"),
    ("a:8,p:max13s1,c:8", "--head: 'p' leaves a 1×1 map; a class activation map needs more than one position"),
]


@pytest.mark.parametrize("spec, message", BAD_HEADS, ids=[s for s, _ in BAD_HEADS])
def test_bad_heads_are_one_clear_line(tmp_path, capsys, spec, message):
    with pytest.raises(SystemExit) as exit_:
        make(tmp_path, ZOO / "bvlc_reference_caffenet.prototxt", "conv4", 10, "--head", spec, "--lmdb", "a", "b")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        make(tmp_path, ZOO / "bvlc_reference_caffenet.prototxt", "conv4", 10, "--head", "c:8", "--group", "1",
             "--lmdb", "a", "b")
    assert "with --head give each convolution's outputs and group in its item" in capsys.readouterr().err


def test_resnet50_cut_at_res5c(tmp_path):
    files = make(tmp_path, ZOO / "resnet50.prototxt", "res5c", 200, "--global-pool", "--train-list", "t.txt",
                 "--val-list", "v.txt")
    deploy = read_net(files["deploy"])
    names = [lp.name for lp in deploy.layer]
    assert names[names.index("res5c"):] == ["res5c", "res5c_relu", "CAM_conv", "CAM_relu", "CAM_pool", "CAM_fc_200",
                                             "prob"]
    assert deploy.layer[names.index("CAM_pool")].pooling_param.global_pooling
    blobs, params = shapes(files["deploy"])
    assert dict(blobs)["CAM_conv"] == (1, 1024, 7, 7) and dict(params)["CAM_fc_200"] == [(200, 1024), (200,)]
    Net(read_net(files["train_val"]), TRAIN, meta=True)


CAFFE_SHAPES = json.loads((ROOT / "tests/golden/cam_nets/cam_nets.json").read_text())


@pytest.mark.parametrize("case", sorted(CAFFE_SHAPES))
def test_real_caffe_sets_up_the_cam_nets_with_our_shapes(tmp_path, case):
    """tests/golden/cam_nets/make_cam_nets_golden.py had real Caffe set up these deploys: it takes them, with these
    blob and parameter shapes."""
    g = CAFFE_SHAPES[case]
    files = make(tmp_path, ZOO / f"{g['base']}.prototxt", g["cut"], g["classes"], *g.get("args", []), "--lmdb",
                 "train_lmdb", "val_lmdb")
    blobs, params = shapes(files["deploy"])
    assert blobs == [(b, tuple(s)) for b, s in g["blob_shapes"]]
    assert params == [(n, [tuple(s) for s in ps]) for n, ps in g["param_shapes"]]


BAD_CUTS = [
    ("bvlc_googlenet", "inception_4z/output", "--cut inception_4z/output: tests/zoo/bvlc_googlenet.prototxt has no "
                                              "blob of that name (its last blobs: "),
    ("bvlc_googlenet", "pool5/7x7_s1", "--cut pool5/7x7_s1: has no spatial extent (shape 1×1024×1×1)"),
    ("bvlc_alexnet", "fc7", "--cut fc7: has no spatial extent (shape 1×4096)"),
    ("bvlc_googlenet", "inception_4e/3x3", "--cut inception_4e/3x3: is inside a branch: layer 'inception_4e/output' "
                                           "after it also reads 'inception_4e/1x1' (from layer "
                                           "'inception_4e/relu_1x1'), which the cut removes; cut where the branches "
                                           "have joined, e.g. at 'inception_4e/output'"),
    ("resnet50", "res5a_branch2b", "--cut res5a_branch2b: is inside a branch: layer 'res5a' after it also reads "
                                   "'res5a_branch1' (from layer 'scale5a_branch1')"),
    ("bvlc_alexnet", "data", "--cut data: is the net's input"),
]


@pytest.mark.parametrize("net, cut, message", BAD_CUTS, ids=[c for _, c, _ in BAD_CUTS])
def test_bad_cuts_are_one_clear_line(tmp_path, capsys, monkeypatch, net, cut, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        make(tmp_path, f"tests/zoo/{net}.prototxt", cut, 10, "--train-list", "t.txt", "--val-list", "v.txt")
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert not list(tmp_path.iterdir())


def test_a_deploy_base_needs_data_options_and_out_a_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make(tmp_path, ZOO / "bvlc_alexnet.prototxt", "conv5", 10)
    assert "give --train-list and --val-list, or --lmdb TRAIN_DB VAL_DB" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        make(tmp_path / "file", ZOO / "bvlc_alexnet.prototxt", "conv5", 10, "--lmdb", "a", "b")
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'file'}: is a file; give a folder\n"


def test_cut_keeps_both_phases_data_layers():
    """A hand-made train_val: TRAIN and TEST data layers both stay, a TRAIN-only layer on the path stays, the branch
    that ends in its own loss goes."""
    text = """
    layer { name: "d" type: "DummyData" top: "data" top: "label" include { phase: TRAIN } }
    layer { name: "d" type: "DummyData" top: "data" top: "label" include { phase: TEST } }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" }
    layer { name: "drop" type: "Dropout" bottom: "c1" top: "c1" include { phase: TRAIN } }
    layer { name: "aux" type: "InnerProduct" bottom: "c1" top: "aux" }
    layer { name: "aux_loss" type: "SoftmaxWithLoss" bottom: "aux" bottom: "label" top: "aux_loss" }
    layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" }
    layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
    layer { name: "fc" type: "InnerProduct" bottom: "c2" top: "fc" }
    """
    from google.protobuf import text_format

    from caffecam.nets.cam_surgery import cut

    net = text_format.Parse(text, caffe_pb2.NetParameter())
    trunk = cut(net, "c2")
    assert [lp.name for lp in trunk.layers] == ["d", "d", "c1", "drop", "c2", "r2"]
    assert [lp.name for lp in trunk.deploy] == ["c1", "c2", "r2"]
