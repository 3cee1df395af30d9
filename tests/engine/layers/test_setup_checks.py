"""Set-up checks shared by the layer types: the one-line errors Caffe's own checks give."""

import pytest

from caffecam.errors import CaffeCamError
from tests.engine.layers.helpers import TRAIN, build


@pytest.mark.parametrize("text", [
    "type: 'Convolution' convolution_param { num_output: 2 kernel_h: 3 }",
    "type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 stride_w: 2 }",
    "type: 'Pooling' pooling_param { kernel_size: 3 stride_w: 2 }",
    "type: 'Pooling' pooling_param { kernel_size: 3 pad_h: 1 }",
])
def test_lone_h_or_w_field_is_an_error(text):
    with pytest.raises(CaffeCamError, match=r"'hw'.*_h and .*_w"):
        build(f"name: 'hw' {text}", [(1, 1, 7, 7)])


@pytest.mark.parametrize("text,what", [
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", "stride"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 0 }", "kernel"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 dilation: 0 }", "dilation"),
    ("type: 'Convolution' convolution_param { num_output: 2 kernel_size: 3 group: 0 }", "group"),
    ("type: 'Pooling' pooling_param { kernel_size: 3 stride: 0 }", "stride"),
    ("type: 'Pooling' pooling_param { kernel_h: 0 kernel_w: 2 }", "kernel"),
    ("type: 'Dropout' dropout_param { dropout_ratio: 1.5 }", "dropout_ratio"),
    ("type: 'Dropout' dropout_param { dropout_ratio: 1 }", "dropout_ratio"),
])
def test_zero_sizes_and_bad_dropout_ratio_are_errors(text, what):
    # Caffe rejects these at set-up; unchecked they were a ZeroDivisionError or a torch error mid-training.
    with pytest.raises(CaffeCamError, match=rf"'z'.*{what}"):
        build(f"name: 'z' {text}", [(1, 2, 7, 7)], phase=TRAIN)


@pytest.mark.parametrize("text,needle", [
    ("type: 'Pooling' pooling_param { kernel_size: 3 pad: 1 pad_h: 2 pad_w: 2 }", "pad or pad_h"),
    ("type: 'Pooling' pooling_param { kernel_size: 3 stride: 1 stride_h: 2 stride_w: 2 }", "stride or stride_h"),
    ("type: 'Pooling' pooling_param { global_pooling: true kernel_size: 3 }", "kernel_size"),
    ("type: 'Pooling' pooling_param { global_pooling: true stride: 2 }", "stride 1"),
    ("type: 'Pooling' pooling_param { global_pooling: true pad: 1 }", "pad 0"),
    ("type: 'Concat' bottom: 'a' bottom: 'b' concat_param { axis: 1 concat_dim: 2 }", "axis or concat_dim"),
])
def test_conflicting_fields_are_errors_as_in_caffe(text, needle):
    # Caffe rejects these; one value used to win silently (pad_h over pad, axis over concat_dim, the input size over
    # a global pool's kernel_size or stride).
    with pytest.raises(CaffeCamError, match=rf"'cf'.*{needle}"):
        build(f"name: 'cf' {text}", [(1, 2, 7, 7), (1, 2, 7, 7)] if "Concat" in text else [(1, 2, 7, 7)])


@pytest.mark.parametrize("text,shapes,needle", [
    # Caffe: "Number of labels must match number of predictions"; a mismatch was a broadcasting error mid-run.
    ("type: 'Accuracy' bottom: 'a' bottom: 'b' top: 'l'", [(2, 3, 7, 7), (2,)], "label count 2"),
    # Caffe's count(start, end) aborts when end comes first; torch's flatten raised at the first forward.
    ("type: 'Flatten' flatten_param { axis: 3 end_axis: 1 }", [(2, 3, 7, 7)], "end_axis 1 comes before axis 3"),
])
def test_mismatched_set_up_is_an_error(text, shapes, needle):
    with pytest.raises(CaffeCamError, match=rf"'m'.*{needle}"):
        build(f"name: 'm' {text}", shapes)
