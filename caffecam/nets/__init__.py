"""Prototxt generators: caffe_pb2 messages for GoogLeNet-CAM, the demo net and the committed prototxt/ files.

May import: caffecam.proto and caffecam.errors only (they write Caffe's files, they do not run them).
"""
