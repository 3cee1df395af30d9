"""Data in: ImageData/LMDB sources and their prefetching feeds, Datum records, transform_param, robust image
loading, MPII lists, downloads and the synthetic demo set.

May import: caffecam.engine (netparam, prototxt), caffecam.proto and the top-level utilities.
"""
