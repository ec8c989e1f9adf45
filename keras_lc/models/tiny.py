"""The tiny CPU backbone: a dense stage 1 and two residual region stages.

Stage 1 (dense, output stride 4): two stride-2 convs + residual blocks with
BatchNormalization. Stages 2 and 3 (region, same resolution): MaskedResidual
bottleneck blocks with growing dilation, so every block of the later stages runs as
region convolutions, like IRNet-B/C in the paper. Small enough to train on a
2-core CPU in minutes.
"""

import keras

from keras_lc.layers.masked_residual import MaskedResidual, RegionBottleneck, residual_blocks
from keras_lc.layers.region_index import as_region_index


def tiny_stage1(channels=64, stem_channels=32, num_blocks=2, name="stage1"):
    """Dense stage 1 as a functional model: `[B, H, W, 3]` float → `[B, H/4, W/4, channels]`.

    The input is already scaled to [-1, 1] (LayerCascade preprocesses).
    """
    inputs = keras.Input((None, None, 3), name=f"{name}_input")

    def conv_bn(x, filters, strides=1, dilation=1, relu=True, prefix=""):
        x = keras.layers.Conv2D(
            filters, 3, strides=strides, dilation_rate=dilation, padding="same", use_bias=False, name=f"{prefix}_conv"
        )(x)
        # synchronized: batch statistics over the global batch under a tf.distribute strategy
        x = keras.layers.BatchNormalization(synchronized=True, name=f"{prefix}_bn")(x)
        return keras.layers.ReLU(name=f"{prefix}_relu")(x) if relu else x

    x = conv_bn(inputs, stem_channels, strides=2, prefix=f"{name}_stem1")
    x = conv_bn(x, channels, strides=2, prefix=f"{name}_stem2")
    for i in range(num_blocks):
        d = 1 + i % 2
        y = conv_bn(x, channels, dilation=d, prefix=f"{name}_block{i + 1}_a")
        y = conv_bn(y, channels, dilation=d, relu=False, prefix=f"{name}_block{i + 1}_b")
        x = keras.layers.Add(name=f"{name}_block{i + 1}_add")([x, y])
        x = keras.layers.ReLU(name=f"{name}_block{i + 1}_out")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="keras_lc")
class TinyRegionStage(keras.layers.Layer):
    """A region stage: a sequence of MaskedResidual(RegionBottleneck) blocks.

    Args:
        channels: int C (kept through the stage).
        bottleneck_channels: int, inner width of each block.
        dilation_rates: sequence of ints, one block per entry.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float `[B, h, w, C]`; region: bool `[B, h, w]` or `RegionIndex`;
        training: bool.

    Returns:
        float `[B, h, w, C]`: updated inside the region, copied outside.
    """

    def __init__(self, channels, bottleneck_channels, dilation_rates=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.bottleneck_channels = int(bottleneck_channels)
        self.dilation_rates = tuple(int(d) for d in dilation_rates)
        self.blocks = [
            MaskedResidual(
                RegionBottleneck(channels, bottleneck_channels, 3, d, name=f"branch{i + 1}"),
                name=f"block{i + 1}",
            )
            for i, d in enumerate(self.dilation_rates)
        ]

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)

    def call(self, inputs, region, training=None):
        index = as_region_index(region)
        return residual_blocks(self.blocks, inputs, index, training=training)[0]  # the updated dense map

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "bottleneck_channels": self.bottleneck_channels,
                "dilation_rates": self.dilation_rates,
            }
        )
        return config
