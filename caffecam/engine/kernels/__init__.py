"""Fast paths that stand behind a layer (Winograd convolution, LRN with Caffe's gradient, pooling geometry).

Pure tensor code: may import torch and numpy only; the layer keeps the plain formula beside the call.
"""
