"""ResNet-LC: DeepLab-style dilated ResNet-50/101 (output stride 8) as a three-stage cascade.

stage 1 = conv1–conv3 (dense, the last stride-2 block gives output stride 8); stage 2 = conv4
(stride 1, dilation 2); stage 3 = conv5 (stride 1, dilation 4). The bottleneck blocks of stages
2 and 3 are MaskedResidual region computations; their first block changes the channel count
(projection shortcut), so it is computed in the region with zeros outside, like Reduction-B in
IRNet-LC. BatchNormalization is frozen. Layer names are Keras Applications' (`conv4_block1_0_conv`,
`conv4_block2_1_bn`, ...), so `load_imagenet_weights` copies `keras.applications.ResNet50/101`
weights by name.
"""

import keras
import tensorflow as tf

from keras_lc.layers.masked_residual import MaskedResidual
from keras_lc.layers.region_index import RegionIndex, as_region_index
from keras_lc.models.inception_resnet_v2 import RegionConvBN

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_FILTERS = {2: 64, 3: 128, 4: 256, 5: 512}


def _unit(name, filters, kernel, dilation=1, activation="relu"):
    return RegionConvBN(filters, kernel, dilation_rate=dilation if kernel != 1 else 1, activation=activation,
                        use_bias=True, bn_scale=True, epsilon=1.001e-5, conv_name=f"{name}_conv",
                        bn_name=f"{name}_bn", name=name)


@keras.saving.register_keras_serializable(package="keras_lc")
class BottleneckBranch(keras.layers.Layer):
    """1×1 → 3×3 (dilated) → 1×1 (×4) with frozen BN: the residual branch of a ResNet block
    (MaskedResidual branch protocol, returns compact pre-activation values)."""

    def __init__(self, block_name, filters, dilation_rate=1, **kwargs):
        kwargs.setdefault("name", f"{block_name}_branch")
        super().__init__(**kwargs)
        self.block_name, self.filters, self.dilation_rate = block_name, filters, dilation_rate
        self.units = [_unit(f"{block_name}_1", filters, 1), _unit(f"{block_name}_2", filters, 3, dilation_rate),
                      _unit(f"{block_name}_3", 4 * filters, 1, activation=None)]

    def build(self, input_shape):
        shape = input_shape
        for unit in self.units:
            unit.build(shape)
            shape = (None, None, None, unit.filters)

    def apply_at(self, x, index, training=None, strides=1):
        a, b, c = self.units
        if index.dense and strides != 1:
            t = a.apply_dense(x, strides)
        else:
            t = a.apply_at(x, index)
        # zeros outside the region between convs (in the strided dense stem block the region is all pixels)
        t = b.apply_at(t if (index.dense and strides != 1) else index.scatter_for_conv(t), index)
        return c.apply_compact(t)

    compact_input = True  # the first conv is 1×1 (stride 1)

    def apply_compact(self, values, index, training=None):
        """Compact input `[N, C]` -> compact output (stride 1; the first conv is 1×1)."""
        a, b, c = self.units
        t = b.apply_at(index.scatter_for_conv(a.apply_compact(values)), index)
        return c.apply_compact(t)

    def units_list(self):
        return list(self.units)

    def get_config(self):
        config = super().get_config()
        config.update({"block_name": self.block_name, "filters": self.filters, "dilation_rate": self.dilation_rate})
        return config


@keras.saving.register_keras_serializable(package="keras_lc")
class ResNetStage(keras.layers.Layer):
    """One ResNet-LC stage: 1 = conv1..conv3 (dense), 2 = conv4, 3 = conv5 (region).

    Shapes: stage 1 `[B, H, W, 3]` → `[B, H/8, W/8, 512]`; stage 2 → 1024; stage 3 → 2048 channels.
    """

    def __init__(self, stage, depth="resnet50", **kwargs):
        kwargs.setdefault("name", f"{depth}_stage{stage}")
        super().__init__(**kwargs)
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}; got {depth!r}.")
        self.stage, self.depth = int(stage), depth
        counts = DEPTHS[depth]
        groups = {1: (2, 3), 2: (4,), 3: (5,)}[self.stage]
        dilation = {1: 1, 2: 2, 3: 4}[self.stage]
        if self.stage == 1:
            self.conv1 = _unit("conv1", 64, 7)
        self.groups = []
        for g in groups:
            blocks = []
            for i in range(1, counts[g - 2] + 1):
                name = f"conv{g}_block{i}"
                branch = BottleneckBranch(name, _FILTERS[g], dilation)
                shortcut = _unit(f"{name}_0", 4 * _FILTERS[g], 1, activation=None) if i == 1 else None
                blocks.append((branch, shortcut, MaskedResidual(branch, activation="relu", name=name)))
            self.groups.append((g, blocks))

    def build(self, input_shape):
        shape = input_shape
        if self.stage == 1:
            self.conv1.build(shape)
            shape = (None, None, None, 64)
        for g, blocks in self.groups:
            for branch, shortcut, _ in blocks:
                branch.build(shape)
                if shortcut is not None:
                    shortcut.build(shape)
                shape = (None, None, None, 4 * _FILTERS[g])

    def _projection_block(self, x, index, branch, shortcut, strides):
        if index.dense and strides != 1:
            short = shortcut.apply_dense(x, strides)
            full = RegionIndex(tf.ones(tf.shape(short)[:3], tf.bool), dense=True, full=True)
            return tf.nn.relu(short + branch.apply_at(x, index, strides=strides)), full
        out = tf.nn.relu(shortcut.apply_at(x, index) + branch.apply_at(x, index))
        return index.scatter(out), index

    def call(self, inputs, region=None, training=None):
        x = inputs
        if self.stage == 1:
            x = self.conv1.apply_dense(x, strides=2)
            x = tf.nn.max_pool2d(x, 3, 2, "SAME")
            index = RegionIndex(tf.ones(tf.shape(x)[:3], tf.bool), dense=True, full=True)
        else:
            index = as_region_index(region)
            if not index.dense:  # compact trunk: gather once, one scatter at the end (zeros outside M)
                ((_, blocks),) = self.groups
                branch, shortcut, _ = blocks[0]
                values = tf.nn.relu(shortcut.apply_at(x, index) + branch.apply_at(x, index))
                for _, _, residual in blocks[1:]:
                    values = residual.apply_compact(values, index, training=training)
                return index.scatter(values)
        for g, blocks in self.groups:
            for i, (branch, shortcut, residual) in enumerate(blocks):
                if shortcut is not None:
                    strides = 2 if (self.stage == 1 and g == 3) else 1
                    x, index = self._projection_block(x, index, branch, shortcut, strides)
                else:
                    x = residual(x, region=index, training=training)
        return x

    def named_layers(self):
        """`{Keras Applications name: layer}` of every conv and BN in this stage."""
        out = {}
        units = [self.conv1] if self.stage == 1 else []
        for _, blocks in self.groups:
            for branch, shortcut, _ in blocks:
                units += branch.units_list() + ([shortcut] if shortcut is not None else [])
        for unit in units:
            out[unit.conv.name] = unit.conv
            out[unit.bn.name] = unit.bn
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"stage": self.stage, "depth": self.depth})
        return config


def resnet_stages(depth="resnet50"):
    return [ResNetStage(k, depth) for k in (1, 2, 3)]
