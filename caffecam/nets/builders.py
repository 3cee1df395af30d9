"""Builders of Caffe layer, data-layer and solver messages (caffe_pb2), shared by the net generators."""

from caffecam.proto import caffe_pb2

GOOGLENET_MEAN = (104, 117, 123)  # B, G, R


# ---- fillers and layers -------------------------------------------------------------------------------------------

def xavier(std=None):
    f = caffe_pb2.FillerParameter(type="xavier")
    if std is not None:
        f.std = std
    return f


def gaussian(std):
    return caffe_pb2.FillerParameter(type="gaussian", std=std)


def constant(value):
    return caffe_pb2.FillerParameter(type="constant", value=value)


def layer(name, type_, bottoms=(), tops=(), phase=None):
    lp = caffe_pb2.LayerParameter(name=name, type=type_)
    lp.bottom.extend(bottoms)
    lp.top.extend(tops)
    if phase is not None:
        lp.include.add().phase = phase
    return lp


def _learnable(lp):
    """BVLC's standard multipliers: weights lr 1 / decay 1, biases lr 2 / decay 0."""
    lp.param.add(lr_mult=1, decay_mult=1)
    lp.param.add(lr_mult=2, decay_mult=0)
    return lp


def conv(name, bottom, num_output, kernel, stride=1, pad=0, group=1, weight_filler=None, bias_filler=None):
    lp = _learnable(layer(name, "Convolution", [bottom], [name]))
    cp = lp.convolution_param
    cp.num_output = num_output
    if pad:
        cp.pad.append(pad)
    cp.kernel_size.append(kernel)
    if stride != 1:
        cp.stride.append(stride)
    if group != 1:
        cp.group = group
    cp.weight_filler.CopyFrom(weight_filler or xavier())
    cp.bias_filler.CopyFrom(bias_filler or constant(0.2))
    return lp


def relu(name, blob):
    return layer(name, "ReLU", [blob], [blob])


def pool(name, bottom, method="MAX", kernel=3, stride=1, pad=0, global_pooling=False):
    lp = layer(name, "Pooling", [bottom], [name])
    pp = lp.pooling_param
    pp.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(method)
    if global_pooling:
        pp.global_pooling = True
        return lp
    pp.kernel_size = kernel
    pp.stride = stride
    if pad:
        pp.pad = pad
    return lp


def lrn(name, bottom, local_size=5, alpha=0.0001, beta=0.75):
    lp = layer(name, "LRN", [bottom], [name])
    lp.lrn_param.local_size = local_size
    lp.lrn_param.alpha = alpha
    lp.lrn_param.beta = beta
    return lp


def concat(name, bottoms):
    return layer(name, "Concat", bottoms, [name])


def inner_product(name, bottom, num_output, weight_filler=None, bias_filler=None):
    lp = _learnable(layer(name, "InnerProduct", [bottom], [name]))
    ip = lp.inner_product_param
    ip.num_output = num_output
    ip.weight_filler.CopyFrom(weight_filler or xavier())
    ip.bias_filler.CopyFrom(bias_filler or constant(0))
    return lp


def conv_relu(name, relu_name, bottom, num_output, kernel, **kw):
    return [conv(name, bottom, num_output, kernel, **kw), relu(relu_name, name)]


# ---- data layers --------------------------------------------------------------------------------------------------

def _transform(lp, crop_size, mirror, mean=GOOGLENET_MEAN):
    tp = lp.transform_param
    if mirror:
        tp.mirror = True
    tp.crop_size = crop_size
    tp.mean_value.extend(mean)


def _phases(train_source, val_source, batch_train, batch_test):
    return ((caffe_pb2.TRAIN, train_source, batch_train), (caffe_pb2.TEST, val_source, batch_test))


def input_layer(batch, input_size, with_label=False):
    """An Input layer giving `data` (batch, 3, S, S) and, for nets with a loss, `label` (batch,)."""
    lp = layer("data", "Input", tops=["data", "label"] if with_label else ["data"])
    lp.input_param.shape.add().dim.extend([batch, 3, input_size, input_size])
    if with_label:
        lp.input_param.shape.add().dim.append(batch)
    return lp


def image_data_layers(train_source, val_source, root_folder, new_size, crop_size, batch_train, batch_test,
                      mean=GOOGLENET_MEAN):
    """ImageData TRAIN (shuffled, mirrored, random crop) and TEST (centre crop) layers named `data`."""
    out = []
    for phase, source, batch in _phases(train_source, val_source, batch_train, batch_test):
        lp = layer("data", "ImageData", tops=["data", "label"], phase=phase)
        _transform(lp, crop_size, mirror=phase == caffe_pb2.TRAIN, mean=mean)
        ip = lp.image_data_param
        ip.source = source
        ip.batch_size = batch
        if phase == caffe_pb2.TRAIN:
            ip.shuffle = True
        ip.new_height = new_size
        ip.new_width = new_size
        if root_folder:
            ip.root_folder = root_folder
        out.append(lp)
    return out


def lmdb_data_layers(train_source, val_source, crop_size, batch_train, batch_test, mean=GOOGLENET_MEAN):
    """Data layers (backend LMDB) reading Datum records that already hold resized images."""
    out = []
    for phase, source, batch in _phases(train_source, val_source, batch_train, batch_test):
        lp = layer("data", "Data", tops=["data", "label"], phase=phase)
        _transform(lp, crop_size, mirror=phase == caffe_pb2.TRAIN, mean=mean)
        lp.data_param.source = source
        lp.data_param.batch_size = batch
        lp.data_param.backend = caffe_pb2.DataParameter.LMDB
        out.append(lp)
    return out


# ---- solvers ------------------------------------------------------------------------------------------------------

def solver(net, test_iter, test_interval, base_lr, stepsize, max_iter, snapshot, snapshot_prefix, solver_mode,
           gamma=0.1, display=20, average_loss=20, momentum=0.9, weight_decay=0.0005, random_seed=None):
    s = caffe_pb2.SolverParameter(
        net=net, test_interval=test_interval, base_lr=base_lr, lr_policy="step", gamma=gamma, stepsize=stepsize,
        display=display, average_loss=average_loss, max_iter=max_iter, momentum=momentum,
        weight_decay=weight_decay, snapshot=snapshot, snapshot_prefix=snapshot_prefix,
        solver_mode=caffe_pb2.SolverParameter.SolverMode.Value(solver_mode))
    s.test_iter.append(test_iter)
    if random_seed is not None:
        s.random_seed = random_seed
    return s
