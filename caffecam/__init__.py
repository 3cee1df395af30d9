"""GoogLeNet-CAM toolkit: Caffe nets, weights, solver and logs on PyTorch, plus class activation maps."""

from caffecam.errors import CaffeCamError

__all__ = ["CaffeCamError"]
