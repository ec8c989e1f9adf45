import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lc.benchmark import blob_region
from keras_lc.layers import RegionConv2D, RegionIndex

KERNELS = [1, 3, (1, 7), (7, 1)]


def _twin_conv(rc, x, kernel_size, dilation):
    conv = keras.layers.Conv2D(rc.filters, kernel_size, dilation_rate=dilation, padding="same")
    conv.build(x.shape)
    conv.set_weights(rc.get_weights())
    return conv


@pytest.mark.parametrize("kernel_size", KERNELS)
@pytest.mark.parametrize("dilation", [1, 2])
def test_full_region_equals_conv2d(kernel_size, dilation):
    x = tf.random.stateless_normal([2, 13, 11, 5], seed=[1, 2])
    rc = RegionConv2D(6, kernel_size, dilation_rate=dilation, bias_initializer="random_normal")
    y = rc(x, tf.ones([2, 13, 11], tf.bool))
    ref = _twin_conv(rc, x, kernel_size, dilation)(x)
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("kernel_size", KERNELS)
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.7])
def test_blob_region_equals_masked_dense(kernel_size, dilation, fraction):
    x = tf.random.stateless_normal([3, 17, 19, 4], seed=[3, 4])
    region = blob_region((3, 17, 19), fraction, seed=int(fraction * 100))
    rc = RegionConv2D(5, kernel_size, dilation_rate=dilation, activation="relu", bias_initializer="random_normal")
    y = rc(x, region)
    mask = region[..., None].astype(np.float32)
    ref = _twin_conv(rc, x, kernel_size, dilation)(x)
    ref = keras.activations.relu(ref) * mask
    np.testing.assert_allclose(y, ref, atol=1e-5)
    # the dense (masked reference) path of the same layer agrees too
    np.testing.assert_allclose(rc(x, region=RegionIndex(region, dense=True)), ref, atol=1e-5)


def test_regions_differ_per_image_in_batch():
    x = tf.random.stateless_normal([2, 9, 9, 3], seed=[5, 6])
    region = np.zeros((2, 9, 9), bool)
    region[0, :3] = True
    region[1, 5:, 5:] = True
    rc = RegionConv2D(2, 3)
    y = rc(x, region).numpy()
    for b in range(2):
        yb = rc(x[b : b + 1], region[b : b + 1]).numpy()[0]
        np.testing.assert_allclose(y[b], yb, atol=1e-6)
    assert np.all(y[~region] == 0)


def test_empty_region_returns_zeros():
    x = tf.random.stateless_normal([2, 8, 8, 3], seed=[7, 8])
    rc = RegionConv2D(4, 3, bias_initializer="ones")
    y = rc(x, tf.zeros([2, 8, 8], tf.bool))
    assert y.shape == (2, 8, 8, 4)
    assert not np.any(y.numpy())


def test_gradient_only_through_region_neighbourhoods():
    x = tf.random.stateless_normal([1, 12, 12, 2], seed=[9, 9])
    region = np.zeros((1, 12, 12), bool)
    region[0, 6, 6] = True
    rc = RegionConv2D(3, 3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = rc(x, region)
        loss = tf.reduce_sum(y**2)
    g = tape.gradient(loss, x).numpy()[0, ..., 0] != 0
    assert g[5:8, 5:8].any() and not g[:5].any() and not g[8:].any()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_scatter_paths_match_scatter_nd_values_and_gradients(fraction):
    # RegionIndex writes compact values back by a gather through its inverse index; it must equal tf.scatter_nd,
    # gradient included (batch of two images with different regions, and the empty region)
    region = tf.constant(blob_region((2, 9, 7), fraction, seed=0) if fraction else np.zeros((2, 9, 7), bool))
    index = RegionIndex(region)
    values = tf.random.stateless_normal([int(tf.reduce_sum(tf.cast(region, tf.int32))), 4], seed=[3, 4])
    weights = tf.random.stateless_normal([2, 9, 7, 4], seed=[5, 6])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        dense = index.scatter(values)
        reference = tf.scatter_nd(index.coords, values, [2, 9, 7, 4])
        flat = index.scatter_for_conv(values)
        losses = [tf.reduce_sum(weights * dense), tf.reduce_sum(weights * reference),
                  tf.reduce_sum(tf.reshape(weights, [-1, 4]) * flat[:-1]) + 7.0 * tf.reduce_sum(flat[-1])]
    np.testing.assert_array_equal(dense, reference)
    np.testing.assert_array_equal(flat[:-1], tf.reshape(reference, [-1, 4]))
    np.testing.assert_array_equal(flat[-1], np.zeros(4))  # the padding row that neighbourhood gathers read
    grads = [tape.gradient(loss, values) for loss in losses]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-6)
    np.testing.assert_allclose(grads[2], grads[1], atol=1e-6)


def test_weights_interchange_with_conv2d():
    rc = RegionConv2D(3, (1, 7), dilation_rate=2)
    rc.build((None, None, None, 4))
    conv = keras.layers.Conv2D(3, (1, 7), dilation_rate=2, padding="same")
    conv.build((None, 8, 8, 4))
    assert [w.shape for w in rc.get_weights()] == [w.shape for w in conv.get_weights()]


def test_config_round_trip():
    rc = RegionConv2D(7, (3, 1), dilation_rate=(2, 1), activation="relu", use_bias=False, name="rc")
    clone = RegionConv2D.from_config(rc.get_config())
    assert clone.get_config() == rc.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"kernel_size": 2}, "odd kernel"), ({"kernel_size": 3, "dilation_rate": 0}, "dilation_rate")],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegionConv2D(4, **kwargs)


def test_bad_region_shape_and_dtype():
    x = tf.zeros([2, 8, 8, 3])
    rc = RegionConv2D(4, 3)
    with pytest.raises(ValueError, match="region has shape"):
        rc(x, tf.ones([2, 8, 9], tf.bool))
    with pytest.raises(ValueError, match="shape \\[B, H, W\\]"):
        rc(x, tf.ones([2, 8, 8, 1], tf.bool))
    with pytest.raises(ValueError, match="bool"):
        rc(x, tf.ones([2, 8, 8], tf.float32))
    with pytest.raises(ValueError, match="input channels"):
        rc(tf.zeros([2, 8, 8, 5]), tf.ones([2, 8, 8], tf.bool))
