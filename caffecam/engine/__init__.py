"""The Caffe engine: prototxt and caffemodel files in, a torch.nn.Module out (net, layers, kernels, weights,
fillers, V0/V1 upgrades).

May import: caffecam.proto and the top-level utilities (errors, atomic, textfile); nothing above it.
"""
