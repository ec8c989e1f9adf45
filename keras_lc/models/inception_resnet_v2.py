"""IRNet-LC: Inception-ResNet-v2 as a three-stage layer cascade (the paper's §3.1).

- stage 1 = Stem + IRNet-A blocks (`block35_i`) + Reduction-A (`mixed_6a`), dense;
- stage 2 = IRNet-B blocks (`block17_i`) + Reduction-B (`mixed_7a`), region computation;
- stage 3 = IRNet-C blocks (`block8_i`) + the final 1×1 conv (`conv_7b`), region computation.

For segmentation: no pooling head, 'same' padding everywhere, Reduction-A/B strides 2→1 so
the output stride is 8 (512×512 → 64×64), IRNet-B convolutions dilated by 2 and IRNet-C's
(and Reduction-B's) by 4, DeepLab style; every BatchNormalization frozen (inference
statistics, not trainable), which is also what makes its region computation exact.

One implementation serves both paths: each conv is a `RegionConv2D` + frozen BN, and stage 1
runs it with a dense all-true `RegionIndex`. Layer names follow Keras Applications
(`block35_i_conv`, `mixed_6a`, `block17_i_conv`, `mixed_7a`, `block8_i_conv`, `conv_7b`,
`conv_7b_bn`); its unnamed convs are matched by creation order in `weights.py`.
"""

import keras
import tensorflow as tf

from keras_lc.layers.masked_residual import MaskedResidual, residual_blocks
from keras_lc.layers.region_conv import RegionConv2D
from keras_lc.layers.region_index import RegionIndex, as_region_index
from keras_lc.models import folding


@keras.saving.register_keras_serializable(package="keras_lc")
class RegionConvBN(keras.layers.Layer):
    """RegionConv2D + frozen BatchNormalization + activation (Keras Applications' conv-BN units).

    Defaults match InceptionResNetV2 (no conv bias, BN without scale, epsilon 1e-3); ResNet
    uses `use_bias=True, bn_scale=True, epsilon=1.001e-5`; EfficientNet-Lite `bn_scale=True` and
    `activation="relu6"` (or None). `conv_name`/`bn_name` set the
    sublayer names (default `<name>_conv`, `<name>_bn`).
    `apply_at(x_dense, index)` → compact values; `apply_compact(t)` for 1×1 kernels (`compact_input`).
    """

    def __init__(self, filters, kernel_size, dilation_rate=1, activation="relu", use_bias=False, bn_scale=False,
                 epsilon=1e-3, conv_name=None, bn_name=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.dilation_rate = filters, kernel_size, dilation_rate
        self.activation, self.use_bias, self.bn_scale, self.epsilon = activation, use_bias, bn_scale, epsilon
        self.conv_name, self.bn_name = conv_name, bn_name
        self.conv = RegionConv2D(filters, kernel_size, dilation_rate=dilation_rate, use_bias=use_bias,
                                 name=conv_name or f"{self.name}_conv")
        self.bn = keras.layers.BatchNormalization(scale=bn_scale, epsilon=epsilon, name=bn_name or f"{self.name}_bn")
        self.bn.trainable = False  # frozen: ImageNet inference statistics

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build((None, self.filters))

    def folded(self, dtype):
        """`(kernel, bias)` with the frozen BN folded in: conv(x, kernel) + bias == BN(conv(x) + conv bias).

        One conv with its bias replaces conv, subtract, multiply and add over the whole feature map
        (those elementwise ops took more time than the matmuls in a profile of the Lite0 forward pass).
        Inside `folding.folded_batchnorm` the weights folded once, else folded here (`compute_folded`).
        """
        return folding.folded_weights(self, dtype, self.compute_folded)

    def compute_folded(self, dtype):
        """`folded`, computed from the current weights."""
        bn = self.bn
        scale = tf.math.rsqrt(tf.cast(bn.moving_variance, dtype) + bn.epsilon)
        if bn.scale:
            scale = scale * tf.cast(bn.gamma, dtype)
        shift = tf.cast(bn.beta, dtype) - tf.cast(bn.moving_mean, dtype) * scale
        if self.use_bias:
            shift = shift + tf.cast(self.conv.bias, dtype) * scale
        return tf.cast(self.conv.kernel, dtype) * scale, shift

    def _activate(self, t):
        if self.activation == "relu":
            return tf.nn.relu(t)
        return tf.nn.relu6(t) if self.activation == "relu6" else t

    def apply_at(self, x, index, training=None):
        kernel, bias = self.folded(x.dtype)
        return self._activate(self.conv.apply_at(x, index, kernel=kernel, bias=bias))

    @property
    def compact_input(self):
        return self.conv.is_pointwise

    def apply_compact(self, t, index=None, training=None):
        kernel, bias = self.folded(t.dtype)
        return self._activate(self.conv.apply_compact(t, kernel=kernel, bias=bias))

    def apply_dense(self, x, strides=1):
        """The unit on a full map `[B, H, W, C]`, any stride (a strided conv is not dilated)."""
        kernel, bias = self.folded(x.dtype)
        return self._activate(self.conv.apply_dense(x, strides, kernel=kernel, bias=bias))

    def conv_bn_pairs(self):
        return [(self.conv, self.bn)]

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size,
                       "dilation_rate": self.dilation_rate, "activation": self.activation,
                       "use_bias": self.use_bias, "bn_scale": self.bn_scale, "epsilon": self.epsilon,
                       "conv_name": self.conv_name, "bn_name": self.bn_name})
        return config


def _make_branches(specs, prefix, dilation_rate):
    """Parallel branches of RegionConvBN from `[[(filters, kernel), ...], ...]`; k×k convs dilated."""
    return [
        [RegionConvBN(f, k, dilation_rate=dilation_rate if k != 1 else 1, name=f"{prefix}_b{i}_{j}")
         for j, (f, k) in enumerate(spec)]
        for i, spec in enumerate(specs)
    ]


def _build_branches(branches, input_shape):
    for branch in branches:
        shape = input_shape
        for layer in branch:
            layer.build(shape)
            shape = (None, None, None, layer.filters)


def _chain(layers, x, index, compact=False):
    """Apply a branch of RegionConvBN layers: the first reads the dense map (or, with
    `compact`, the compact trunk: it must be 1×1), the rest chain (1×1 convs stay compact;
    k×k convs read the scattered map of the previous output)."""
    t = layers[0].apply_compact(x) if compact else layers[0].apply_at(x, index)
    for layer in layers[1:]:
        t = layer.apply_compact(t) if layer.conv.is_pointwise else layer.apply_at(index.scatter_for_conv(t), index)
    return t


@keras.saving.register_keras_serializable(package="keras_lc")
class InceptionResNetBranch(keras.layers.Layer):
    """The residual branch of an Inception-ResNet block (block35, block17 or block8): parallel
    conv branches, concatenated, then a 1×1 conv with bias (`<block>_conv`) back to C channels.

    Follows the MaskedResidual branch protocol (`apply_at(x, index)` → compact `[N, C]`).
    """

    SPECS = {
        "block35": [[(32, 1)], [(32, 1), (32, 3)], [(32, 1), (48, 3), (64, 3)]],
        "block17": [[(192, 1)], [(128, 1), (160, (1, 7)), (192, (7, 1))]],
        "block8": [[(192, 1)], [(192, 1), (224, (1, 3)), (256, (3, 1))]],
    }

    def __init__(self, block_type, block_idx, channels, dilation_rate=1, **kwargs):
        kwargs.setdefault("name", f"{block_type}_{block_idx}_branch")
        super().__init__(**kwargs)
        if block_type not in self.SPECS:
            raise ValueError(f"Unknown Inception-ResNet block type {block_type!r}.")
        self.block_type, self.block_idx = block_type, block_idx
        self.channels, self.dilation_rate = channels, dilation_rate
        prefix = f"{block_type}_{block_idx}"
        self.branches = _make_branches(self.SPECS[block_type], prefix, dilation_rate)
        self.up = RegionConv2D(channels, 1, use_bias=True, name=f"{prefix}_conv")

    def build(self, input_shape):
        _build_branches(self.branches, input_shape)
        self.up.build((None, None, None, sum(b[-1].filters for b in self.branches)))

    def apply_at(self, x, index, training=None):
        mixed = tf.concat([_chain(branch, x, index) for branch in self.branches], axis=-1)
        return self.up.apply_compact(mixed)

    compact_input = True  # every branch starts with a 1×1 conv

    def apply_compact(self, values, index, training=None):
        """Compact input `[N, C]` -> compact output: every branch starts with a 1×1 conv."""
        mixed = tf.concat([_chain(branch, values, index, compact=True) for branch in self.branches], axis=-1)
        return self.up.apply_compact(mixed)

    def conv_bn_pairs(self):
        return [p for branch in self.branches for layer in branch for p in layer.conv_bn_pairs()]

    def get_config(self):
        config = super().get_config()
        config.update({"block_type": self.block_type, "block_idx": self.block_idx, "channels": self.channels,
                       "dilation_rate": self.dilation_rate})
        return config


@keras.saving.register_keras_serializable(package="keras_lc")
class InceptionReduction(keras.layers.Layer):
    """Reduction-A (`mixed_6a`) or Reduction-B (`mixed_7a`) with stride 1: parallel conv branches and a
    3×3 max pool, concatenated. In a region, the max pool takes the max over gathered
    neighbourhoods (its input is ReLU output, so the zero padding equals 'same' max padding)."""

    SPECS = {
        "mixed_6a": [[(384, 3)], [(256, 1), (256, 3), (384, 3)]],
        "mixed_7a": [[(256, 1), (384, 3)], [(256, 1), (288, 3)], [(256, 1), (288, 3), (320, 3)]],
    }

    def __init__(self, block_name, dilation_rate=1, **kwargs):
        kwargs.setdefault("name", block_name)
        super().__init__(**kwargs)
        if block_name not in self.SPECS:
            raise ValueError(f"Unknown reduction block {block_name!r}.")
        self.block_name, self.dilation_rate = block_name, dilation_rate
        self.branches = _make_branches(self.SPECS[block_name], block_name, dilation_rate)

    def build(self, input_shape):
        _build_branches(self.branches, input_shape)

    def call(self, inputs, region, training=None):
        index = as_region_index(region)
        if index.dense:  # the 3x3 max pool keeps dilation 1 (TF has no dilated 'SAME' pooling)
            pooled = tf.nn.max_pool2d(inputs, 3, 1, "SAME")
        else:
            patches = index.gather_neighbourhoods(inputs, (3, 3), (1, 1))
            pooled = tf.reduce_max(tf.reshape(patches, [-1, 9, tf.shape(inputs)[-1]]), axis=1)
        mixed = tf.concat([_chain(branch, inputs, index) for branch in self.branches] + [pooled], axis=-1)
        return index.scatter(mixed)

    def conv_bn_pairs(self):
        return [p for branch in self.branches for layer in branch for p in layer.conv_bn_pairs()]

    def get_config(self):
        config = super().get_config()
        config.update({"block_name": self.block_name, "dilation_rate": self.dilation_rate})
        return config


@keras.saving.register_keras_serializable(package="keras_lc")
class IRNetStage(keras.layers.Layer):
    """One IRNet-LC stage. `stage=1`: stem + `blocks` × block35 + mixed_6a (dense); `stage=2`:
    `blocks` × block17 + mixed_7a; `stage=3`: `blocks` × block8 + conv_7b (region).

    Call: `stage(x, region=None | RegionIndex, training)`; stage 1 ignores the region.
    Shapes: stage 1 `[B, H, W, 3]` (scaled to [-1, 1]) → `[B, H/8, W/8, 1088]`;
    stage 2 → 2080 channels; stage 3 → 1536 channels.
    """

    def __init__(self, stage, blocks, **kwargs):
        kwargs.setdefault("name", f"irnet_stage{stage}")
        super().__init__(**kwargs)
        self.stage, self.num_blocks = int(stage), int(blocks)
        if self.stage == 1:
            self.stem = [RegionConvBN(32, 3, name="stem_0"), RegionConvBN(32, 3, name="stem_1"),
                         RegionConvBN(64, 3, name="stem_2"), RegionConvBN(80, 1, name="stem_3"),
                         RegionConvBN(192, 3, name="stem_4")]
            self.mixed_5b = [[RegionConvBN(96, 1, name="mixed_5b_b0_0")],
                             [RegionConvBN(48, 1, name="mixed_5b_b1_0"), RegionConvBN(64, 5, name="mixed_5b_b1_1")],
                             [RegionConvBN(64, 1, name="mixed_5b_b2_0"), RegionConvBN(96, 3, name="mixed_5b_b2_1"),
                              RegionConvBN(96, 3, name="mixed_5b_b2_2")],
                             [RegionConvBN(64, 1, name="mixed_5b_b3_0")]]
            spec = ("block35", 320, 0.17, 1)
            self.reduction = InceptionReduction("mixed_6a", 1)
        elif self.stage == 2:
            spec = ("block17", 1088, 0.1, 2)
            self.reduction = InceptionReduction("mixed_7a", 2)
        elif self.stage == 3:
            spec = ("block8", 2080, 0.2, 4)
            self.conv_7b = RegionConvBN(1536, 1, name="conv_7b")
        else:
            raise ValueError(f"stage must be 1, 2 or 3; got {stage}.")
        block_type, channels, scale, dilation = spec
        self.blocks = []
        for i in range(1, self.num_blocks + 1):
            last_c = self.stage == 3 and i == self.num_blocks
            self.blocks.append(MaskedResidual(
                InceptionResNetBranch(block_type, i, channels, dilation),
                scale=1.0 if last_c else scale, activation=None if last_c else "relu", name=f"{block_type}_{i}"))

    def build(self, input_shape):
        if self.stage == 1:
            shape = input_shape
            for layer in self.stem:
                layer.build(shape)
                shape = (None, None, None, layer.filters)
            _build_branches(self.mixed_5b, shape)
            shape = (None, None, None, 320)
        else:
            shape = input_shape
        for block in self.blocks:
            block.build(shape)
        if self.stage in (1, 2):
            self.reduction.build(shape)
        else:
            self.conv_7b.build(shape)

    def call(self, inputs, region=None, training=None):
        if self.stage == 1:
            x = inputs
            for i, layer in enumerate(self.stem):
                x = layer.apply_dense(x, strides=2 if i == 0 else 1)
                if i in (2, 4):  # the stem's two stride-2 max pools
                    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
            full = RegionIndex(tf.ones(tf.shape(x)[:3], tf.bool), dense=True, full=True)
            pool = tf.nn.avg_pool2d(x, 3, 1, "SAME")
            outs = [_chain(b, x, full) for b in self.mixed_5b[:3]] + [self.mixed_5b[3][0].apply_at(pool, full)]
            x = tf.concat(outs, axis=-1)
            for block in self.blocks:
                x = block(x, region=full, training=training)
            return self.reduction(x, region=full, training=training)
        index = as_region_index(region)
        x, compact = residual_blocks(self.blocks, inputs, index, training=training)  # compact trunk
        if self.stage == 2:
            return self.reduction(x, region=index, training=training)
        return index.scatter(self.conv_7b.apply_compact(compact))

    def conv_bn_pairs(self):
        pairs = []
        if self.stage == 1:
            pairs += [p for layer in self.stem for p in layer.conv_bn_pairs()]
            pairs += [p for b in self.mixed_5b for layer in b for p in layer.conv_bn_pairs()]
        for block in self.blocks:
            pairs += block.branch.conv_bn_pairs()
        if self.stage in (1, 2):
            pairs += self.reduction.conv_bn_pairs()
        return pairs

    def segments(self):
        """`[(segment name, [(RegionConv2D, BatchNormalization), ...]), ...]` in Keras Applications'
        creation order, plus `{name: layer}` of the layers Keras names (`<block>_conv`, `conv_7b`)."""
        segs, named = [], {}
        if self.stage == 1:
            segs.append(("stem", [p for layer in self.stem for p in layer.conv_bn_pairs()]))
            segs.append(("mixed_5b", [p for b in self.mixed_5b for layer in b for p in layer.conv_bn_pairs()]))
        for block in self.blocks:
            segs.append((block.name, block.branch.conv_bn_pairs()))
            named[f"{block.name}_conv"] = block.branch.up
        if self.stage in (1, 2):
            segs.append((self.reduction.block_name, self.reduction.conv_bn_pairs()))
        else:
            named["conv_7b"] = self.conv_7b.conv
            named["conv_7b_bn"] = self.conv_7b.bn
        return segs, named

    def get_config(self):
        config = super().get_config()
        config.update({"stage": self.stage, "blocks": self.num_blocks})
        return config


def irnet_stages(block_counts=(5, 10, 5)):
    """The three IRNet-LC stages; `block_counts` (A, B, C): the paper's (5, 10, 5) or Keras' (10, 20, 10)."""
    if len(block_counts) != 3 or any(int(b) < 1 for b in block_counts):
        raise ValueError(f"block_counts must be three positive ints (A, B, C); got {block_counts}.")
    return [IRNetStage(k, int(n)) for k, n in zip((1, 2, 3), block_counts)]
