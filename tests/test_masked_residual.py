import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lc.benchmark import blob_region
from keras_lc.layers import MaskedResidual, RegionBottleneck, RegionConv2D, RegionIndex, StageHead


def _block(channels=6):
    block = MaskedResidual(RegionBottleneck(channels, 5, kernel_size=3, dilation_rate=2))
    block.build((None, None, None, channels))
    # non-trivial weights everywhere (the expand conv starts small)
    rng = np.random.default_rng(0)
    block.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in block.get_weights()])
    return block


def test_empty_region_is_identity():
    x = tf.random.stateless_normal([2, 9, 10, 6], seed=[1, 1])
    block = _block()
    y = block(x, tf.zeros([2, 9, 10], tf.bool))
    np.testing.assert_array_equal(y, x)


def test_blob_region_equals_masked_dense_reference():
    x = tf.random.stateless_normal([2, 15, 13, 6], seed=[2, 2])
    region = blob_region((2, 15, 13), 0.4, seed=3)
    block = _block()
    y = block(x, region).numpy()
    # Plain dense reference: Conv2D/LayerNorm on the whole map, zeros outside M between
    # convolutions, residual added only inside M.
    b = block.branch
    mask = region[..., None].astype(np.float32)

    def conv(layer, t):
        ref = keras.layers.Conv2D(layer.filters, layer.kernel_size, dilation_rate=layer.dilation_rate, padding="same",
                                  use_bias=layer.use_bias)
        ref.build(t.shape)
        ref.set_weights(layer.get_weights())
        return ref(t)

    t = tf.nn.relu(b.norm1(conv(b.reduce, x))) * mask
    t = tf.nn.relu(b.norm2(conv(b.conv, t)))
    t = conv(b.expand, t)
    ref = x + t * mask
    np.testing.assert_allclose(y, ref, atol=1e-5)
    np.testing.assert_array_equal(y[~region], x.numpy()[~region])  # copied outside M
    np.testing.assert_allclose(block(x, region=RegionIndex(region, dense=True)), ref, atol=1e-5)


def test_full_region_is_plain_residual():
    x = tf.random.stateless_normal([1, 8, 8, 4], seed=[3, 3])
    conv = RegionConv2D(4, 3)
    block = MaskedResidual(conv, scale=0.5)
    y = block(x, tf.ones([1, 8, 8], tf.bool))
    dense = keras.layers.Conv2D(4, 3, padding="same")
    dense.build(x.shape)
    dense.set_weights(conv.get_weights())
    np.testing.assert_allclose(y, x + 0.5 * dense(x), atol=1e-5)


def test_masked_residual_serializes():
    block = _block()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    x = tf.random.stateless_normal([1, 6, 6, 6], seed=[4, 4])
    region = blob_region((1, 6, 6), 0.5, seed=1)
    clone.build(x.shape)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(x, region), block(x, region), atol=1e-6)


def test_branch_must_follow_protocol():
    import pytest

    with pytest.raises(ValueError, match="apply_at"):
        MaskedResidual(keras.layers.Dense(3))


def test_stage_head_region_and_decision():
    x = tf.random.stateless_normal([2, 10, 12, 8], seed=[5, 5]) * 3
    region = blob_region((2, 10, 12), 0.5, seed=5)
    head = StageHead(4, hidden_channels=8)
    probs, nxt, logits = head(x, region, rho=0.6, return_logits=True)
    probs, nxt = probs.numpy(), nxt.numpy()
    assert probs.shape == (2, 10, 12, 4) and logits.shape == (2, 10, 12, 4)
    np.testing.assert_allclose(probs[region].sum(-1), 1.0, atol=1e-5)
    assert not probs[~region].any()
    np.testing.assert_array_equal(nxt, region & (probs.max(-1) < 0.6))
    assert not nxt[~region].any()
    # dense reference path agrees
    p2, n2 = head(x, region=RegionIndex(region, dense=True), rho=0.6)
    np.testing.assert_allclose(p2, probs, atol=1e-5)
    np.testing.assert_array_equal(n2, nxt)
    # rho = 1 forwards the whole region, even saturated pixels
    _, n3 = head(x * 1e4, region, rho=1.0)
    np.testing.assert_array_equal(n3, region)


def _chain_of_blocks(n=3, channels=6, activation="relu"):
    blocks = []
    for i in range(n):
        block = MaskedResidual(RegionBottleneck(channels, 5, kernel_size=3, dilation_rate=1 + i), scale=0.7,
                               activation=activation)
        block.build((None, None, None, channels))
        rng = np.random.default_rng(i)
        block.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in block.get_weights()])
        blocks.append(block)
    return blocks


def _masked_dense_chain(blocks, x, region):
    """The plain reference: each block densely on the whole map, residual kept only inside M."""
    index = RegionIndex(region, dense=True)
    for block in blocks:
        x = block(x, region=index)
    return x


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_compact_trunk_equals_masked_dense_reference(activation, fraction):
    from keras_lc.layers.masked_residual import residual_blocks

    x = tf.random.stateless_normal([2, 14, 11, 6], seed=[5, 5])
    region = blob_region((2, 14, 11), fraction, seed=4) if 0 < fraction < 1 else np.full((2, 14, 11), fraction > 0)
    blocks = _chain_of_blocks(activation=activation)
    dense, compact = residual_blocks(blocks, x, RegionIndex(region))
    ref = _masked_dense_chain(blocks, x, region)
    np.testing.assert_allclose(dense, ref, atol=1e-4)
    np.testing.assert_allclose(compact, ref.numpy()[region], atol=1e-4)
    np.testing.assert_array_equal(dense.numpy()[~region], x.numpy()[~region])  # empty region: identity
    # One block at a time (scatter after each) gives the same numbers.
    one_by_one = x
    for block in blocks:
        one_by_one = block(one_by_one, region=RegionIndex(region))
    np.testing.assert_allclose(dense, one_by_one, atol=1e-4)
