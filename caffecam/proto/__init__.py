"""Caffe's schema: caffe.proto (Caffe's field numbers) and the caffe_pb2.py protoc generated from it.

Imports nothing of caffecam.
"""
