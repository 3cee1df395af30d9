"""Caffe's Solver: parameter updates, learning-rate policies, test/display/snapshot/resume, torchrun, glog logs.

May import: caffecam.engine, caffecam.data, caffecam.proto and the top-level utilities.
"""
