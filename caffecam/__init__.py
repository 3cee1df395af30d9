"""caffecam: Caffe nets, weights, solver and logs on PyTorch, plus class activation maps.

One folder per concern, data flowing down: proto -> engine -> data -> train, cam; nets writes prototxt; bench
measures everything. tests/test_layout.py checks that no module imports from a folder below its own.
"""

from caffecam.errors import CaffeCamError

__all__ = ["CaffeCamError"]
