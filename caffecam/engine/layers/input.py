"""Input layers: Input, and Data/ImageData, whose tops the caller hands in."""

from caffecam.engine.layers.base import Layer, register


@register("Input", "Data", "ImageData")
class Input(Layer):
    """Input, Data and ImageData: their tops are handed in by the caller; shapes come from the net builder."""

    def setup(self, lp, shapes, gen):
        return list(shapes)

    def forward(self, *xs):
        return list(xs)
