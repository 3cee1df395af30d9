"""Prototxt generators: caffe_pb2 messages for GoogLeNet-CAM, the demo net, the committed prototxt/ files, and the
CAM head put on any backbone (cam_surgery.py, behind scripts/make_cam_net.py).

May import: caffecam.proto and caffecam.errors only (they write Caffe's files, they do not run them).
"""
