"""Region-computation layers of the Deep Layer Cascade.

The region protocol, shared by these layers and the backbones' blocks and branches:

- `call(x, region)`: a full map `[B, H, W, C]` in, a full map out (zeros, or the input for residual
  blocks, outside the region).
- `apply_at(x, index, training=None)`: a full map in, compact rows out (`[N, C']` at `index`'s pixels).
- `apply_compact(values, index=None, training=None)`: compact rows in (`[N, C]`), compact rows out;
  offered where `compact_input` is true (the layer's first conv is 1×1 or works on compact rows), so
  consecutive blocks keep the trunk compact (`masked_residual.residual_blocks`).
"""

from keras_lc.layers.masked_residual import MaskedResidual, RegionBottleneck
from keras_lc.layers.region_conv import RegionConv2D
from keras_lc.layers.region_index import RegionIndex
from keras_lc.layers.stage_head import StageHead

__all__ = ["MaskedResidual", "RegionBottleneck", "RegionConv2D", "RegionIndex", "StageHead"]
