"""The region protocol (keras_lc.layers' docstring): where `compact_input` is true, `apply_compact` on the
gathered rows gives what the map path gives at the region's pixels, for every layer and branch that offers it."""

import numpy as np
import pytest
import tensorflow as tf

from keras_lc.benchmark import blob_region
from keras_lc.layers import RegionBottleneck, RegionConv2D, RegionIndex
from keras_lc.models.efficientnet_lite import MBConvBlock
from keras_lc.models.inception_resnet_v2 import InceptionResNetBranch
from keras_lc.models.resnet import BottleneckBranch

CHANNELS = 8


def _layers():
    return {
        "RegionConv2D 1x1": RegionConv2D(5, 1),
        "RegionBottleneck": RegionBottleneck(CHANNELS, 4, kernel_size=3, dilation_rate=2),
        "MBConvBlock": MBConvBlock(CHANNELS, CHANNELS, 6, 3, 1, 2, index=0),
        "BottleneckBranch": BottleneckBranch("b", 2, dilation_rate=2),
        "InceptionResNetBranch": InceptionResNetBranch("block35", 0, CHANNELS),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_apply_compact_matches_the_map_path(name):
    layer = _layers()[name]
    x = tf.random.stateless_normal([2, 9, 11, CHANNELS], seed=[4, 2])
    layer.build(x.shape)
    rng = np.random.default_rng(1)  # non-trivial weights everywhere (some convs start at zero)
    layer.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) if w.ndim > 1 else w.numpy()
                       for w in layer.weights])
    index = RegionIndex(tf.constant(blob_region((2, 9, 11), 0.4, seed=3)))
    assert layer.compact_input
    got = layer.apply_compact(index.gather(x), index, training=False)
    # the map path: `apply_at` (map in, rows out) where the layer has it, else `call` read at the region
    want = layer.apply_at(x, index) if hasattr(layer, "apply_at") else index.gather(layer(x, region=index))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_kxk_conv_does_not_take_compact_rows():
    conv = RegionConv2D(5, 3)
    conv.build((None, None, None, CHANNELS))
    assert not conv.compact_input
    with pytest.raises(ValueError, match="1x1"):
        conv.apply_compact(tf.zeros([4, CHANNELS]))
