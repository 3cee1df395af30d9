"""Class activation maps: the maps, the pipeline over many images, boxes and localization scores, drawing.

May import: caffecam.engine, caffecam.data (image loading, input lists) and the top-level utilities.
"""
