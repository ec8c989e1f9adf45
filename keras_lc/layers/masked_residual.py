"""MaskedResidual (the paper's Fig. 3c) and the region bottleneck branch it wraps."""

import keras
import tensorflow as tf

from keras_lc.layers.region_conv import RegionConv2D
from keras_lc.layers.region_index import as_region_index


@keras.saving.register_keras_serializable(package="keras_lc")
class MaskedResidual(keras.layers.Layer):
    """Residual block computed only in a region: `h = x + branch(x)` in M, `h = x` outside.

    This is the paper's Fig. 3c: inside the region the residual update is applied,
    outside it the input is copied, so pixels decided by an earlier stage keep their
    features for the neighbourhoods of later region convolutions.

    Args:
        branch: a layer with `apply_at(x, index, training=None)` returning compact
            values of the same channel count as `x` at the region pixels (a
            `RegionConv2D`, a `RegionBottleneck`, or any layer built from region
            convolutions that follows this protocol).
        scale: float multiplier of the branch output (Inception-ResNet uses 0.1–0.2).
        activation: optional activation applied to `h` inside the region only.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float tensor `[B, H, W, C]`.
        region: bool tensor `[B, H, W]` or a `RegionIndex`.
        training: bool, forwarded to the branch.

    Returns:
        float tensor `[B, H, W, C]`.
    """

    def __init__(self, branch, scale=1.0, activation=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(branch, dict):
            branch = keras.saving.deserialize_keras_object(branch)
        if not hasattr(branch, "apply_at"):
            raise ValueError(
                "MaskedResidual needs a branch with `apply_at(x, index, training)` "
                f"(e.g. RegionConv2D or RegionBottleneck); got {type(branch).__name__}."
            )
        self.branch = branch
        self.scale = float(scale)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        if not self.branch.built:
            self.branch.build(input_shape)

    def call(self, inputs, region, training=None):
        index = as_region_index(region)
        index.check_features(inputs, "MaskedResidual inputs")
        update = self.branch.apply_at(inputs, index, training=training)
        if update.shape[-1] is not None and inputs.shape[-1] is not None and update.shape[-1] != inputs.shape[-1]:
            raise ValueError(
                f"The branch returns {update.shape[-1]} channels but the input has {inputs.shape[-1]}: "
                "a residual branch must keep the channel count."
            )
        if self.scale != 1.0:
            update = update * tf.cast(self.scale, update.dtype)
        if self.activation is None:
            return index.scatter_add(inputs, update)
        # Activation only where the block is computed; outside, the input is copied.
        gathered = index.gather(inputs)
        inside = self.activation(gathered + update)
        return index.scatter_add(inputs, inside - gathered)

    def apply_compact(self, values, index, training=None):
        """The block on compact features: `[N, C]` at the region pixels -> `[N, C]`.

        Needs a branch whose `compact_input` is true (its first convs are 1×1, so they need no
        neighbours). Consecutive blocks then keep the trunk compact: see `residual_blocks`.
        """
        update = self.branch.apply_compact(values, index, training=training)
        if self.scale != 1.0:
            update = update * tf.cast(self.scale, update.dtype)
        h = values + update
        return self.activation(h) if self.activation is not None else h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "branch": keras.saving.serialize_keras_object(self.branch),
                "scale": self.scale,
                "activation": keras.activations.serialize(self.activation) if self.activation else None,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lc")
class RegionBottleneck(keras.layers.Layer):
    """Bottleneck branch of region convolutions: 1×1 → k×k (dilated) → 1×1.

    Each conv is followed by a per-pixel LayerNormalization and ReLU (except the
    last). Per-pixel normalisation keeps a pixel's result independent of which other
    pixels are in the region, so the compact and dense paths agree exactly (batch
    statistics would not).

    Args:
        channels: int, input/output channels C.
        bottleneck_channels: int, inner width.
        kernel_size: odd int or pair, the middle conv. Defaults to 3.
        dilation_rate: int or pair, the middle conv. Defaults to 1.
        **kwargs: base layer arguments.

    Call arguments (via `apply_at`, as a MaskedResidual branch):
        x: float `[B, H, W, C]`; index: `RegionIndex`. Returns compact `[N, C]`.
    """

    def __init__(self, channels, bottleneck_channels, kernel_size=3, dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.bottleneck_channels = int(bottleneck_channels)
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        # No bias before a LayerNorm: its mean subtraction cancels it (and Adam would chase noise).
        self.reduce = RegionConv2D(bottleneck_channels, 1, use_bias=False, name="reduce")
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.conv = RegionConv2D(
            bottleneck_channels, kernel_size, dilation_rate=dilation_rate, use_bias=False, name="conv"
        )
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.expand = RegionConv2D(
            channels,
            1,
            kernel_initializer=keras.initializers.VarianceScaling(0.2, "fan_in", "truncated_normal"),
            name="expand",
        )

    def build(self, input_shape):
        b = self.bottleneck_channels
        self.reduce.build(input_shape)
        self.norm1.build((None, b))
        self.conv.build((None, None, None, b))
        self.norm2.build((None, b))
        self.expand.build((None, None, None, b))

    def apply_at(self, x, index, training=None):
        return self.apply_compact(index.gather(x), index, training=training)

    compact_input = True  # the first conv is 1×1

    def apply_compact(self, values, index, training=None):
        """Compact input `[N, C]` -> compact output (the first conv is 1×1: no neighbours needed)."""
        t = self.reduce.apply_compact(values)
        t = tf.nn.relu(self.norm1(t))
        t = self.conv.apply_at(index.scatter_for_conv(t), index)
        t = tf.nn.relu(self.norm2(t))
        return self.expand.apply_compact(t)

    def call(self, inputs, region, training=None):
        index = as_region_index(region)
        return index.scatter(self.apply_at(inputs, index, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "bottleneck_channels": self.bottleneck_channels,
                "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


def residual_blocks(blocks, x, index, training=None):
    """Consecutive `MaskedResidual` blocks with a compact trunk.

    On a sparse region the features are gathered once, every block updates the
    compact `[N, C]` trunk (only k×k convs inside a branch scatter, for their
    neighbourhoods), and one scatter writes the result back into `x`: outside the
    region `x` is copied, as the paper's Fig. 3c requires. Same numbers as calling
    the blocks one by one; on a dense index (or with branches that need dense input)
    it does exactly that.

    Args:
        blocks: list of `MaskedResidual`.
        x: float `[B, H, W, C]`.
        index: `RegionIndex` of `x`'s region.

    Returns:
        `(dense, compact)`: the updated map `[B, H, W, C]` and the trunk at the region
        pixels `[N, C]` (for a dense index, the map itself).
    """
    if index.dense or not all(getattr(b.branch, "compact_input", False) for b in blocks):
        for block in blocks:
            x = block(x, region=index, training=training)
        return x, index.gather(x)
    index.check_features(x, "residual block inputs")
    values = index.gather(x)
    for block in blocks:
        values = block.apply_compact(values, index, training=training)
    return index.scatter_update(x, values), values
