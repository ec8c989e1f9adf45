"""Region-computation layers of the Deep Layer Cascade."""

from keras_lc.layers.masked_residual import MaskedResidual, RegionBottleneck
from keras_lc.layers.region_conv import RegionConv2D
from keras_lc.layers.region_index import RegionIndex
from keras_lc.layers.stage_head import StageHead

__all__ = ["MaskedResidual", "RegionBottleneck", "RegionConv2D", "RegionIndex", "StageHead"]
