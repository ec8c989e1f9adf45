"""The decoder stage head (DeepLabV3+-style, stride-4 features decoded per sub-pixel): its region path against
an independent dense Keras decoder with the same weights, the cell decisions, and the cascade built on it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

from keras_lc import build_model
from keras_lc.benchmark import blob_region
from keras_lc.layers import RegionIndex
from keras_lc.layers.stage_head import StageHead

F = 4  # sub-pixels per cell side


def _head(channels=6, low_channels=5, num_classes=4):
    tf.keras.utils.set_random_seed(3)
    head = StageHead(num_classes, hidden_channels=8, decoder_channels=7, upsample=F)
    head.build((None, None, None, channels))
    head(tf.zeros([1, 2, 2, channels]), region=tf.ones([1, 2, 2], tf.bool), low_level=tf.zeros([1, 8, 8, low_channels]))
    for w in head.weights:  # non-trivial norms and biases
        w.assign(tf.random.normal(w.shape, stddev=0.5) + (1.0 if "gamma" in w.path else 0.0))
    return head


def _keras_decoder_logits(head, x, low):
    """The dense decoder from stock Keras layers: 1×1 conv on [nearest-upsampled hidden, low-level], LayerNorm,
    ReLU, 1×1 conv; cropped."""
    conv = keras.layers.Conv2D(head.hidden_channels, 3, padding="same", use_bias=False)
    conv.build(x.shape)
    conv.set_weights(head.conv.get_weights())
    norm = keras.layers.LayerNormalization(epsilon=1e-5)
    norm.build((None, head.hidden_channels))
    norm.set_weights(head.norm.get_weights())
    hidden = tf.nn.relu(norm(conv(x)))
    up = tf.repeat(tf.repeat(hidden, F, axis=1), F, axis=2)[:, : low.shape[1], : low.shape[2]]
    mix = keras.layers.Conv2D(head.decoder_channels, 1)
    mix.build((None, None, None, head.hidden_channels + low.shape[-1]))
    (kh, bh), (kl,) = head.decoder_hidden.get_weights(), head.decoder_low.get_weights()
    mix.set_weights([np.concatenate([kh, kl], axis=2), bh])
    dnorm = keras.layers.LayerNormalization(epsilon=1e-5)
    dnorm.build((None, head.decoder_channels))
    dnorm.set_weights(head.decoder_norm.get_weights())
    cls = keras.layers.Conv2D(head.num_classes, 1)
    cls.build((None, None, None, head.decoder_channels))
    cls.set_weights(head.decoder_classifier.get_weights())
    return cls(tf.nn.relu(dnorm(mix(tf.concat([up, low], axis=-1)))))


def _fine(region, low):
    return tf.repeat(tf.repeat(region, F, axis=1), F, axis=2)[:, : low.shape[1], : low.shape[2]]


def test_full_region_equals_dense_keras_decoder():
    x = tf.random.stateless_normal([2, 5, 6, 6], seed=[1, 2])
    low = tf.random.stateless_normal([2, 18, 23, 5], seed=[2, 3])  # not a multiple of 4: padded, then cropped
    head = _head()
    probs, _, logits = head(x, region=tf.ones([2, 5, 6], tf.bool), return_logits=True, low_level=low)
    assert probs.shape == (2, 18, 23, 4)
    ref = _keras_decoder_logits(head, x, low)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    np.testing.assert_allclose(probs, tf.nn.softmax(ref), atol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.4, 0.8])
def test_region_equals_masked_dense_and_gradients(fraction):
    x = tf.random.stateless_normal([2, 9, 11, 6], seed=[4, 5])
    low = tf.random.stateless_normal([2, 34, 44, 5], seed=[5, 6])
    region = tf.constant(blob_region((2, 9, 11), fraction, seed=7) if fraction else np.zeros((2, 9, 11), bool))
    head = _head()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, low])
        _, _, sparse = head(x, region=RegionIndex(region), return_logits=True, low_level=low)
        _, _, dense = head(x, region=RegionIndex(region, dense=True), return_logits=True, low_level=low)
        ls, ld = tf.reduce_sum(sparse ** 2), tf.reduce_sum(dense ** 2)
    ref = _keras_decoder_logits(head, x, low) * tf.cast(_fine(region, low)[..., None], tf.float32)
    np.testing.assert_allclose(sparse, ref, atol=1e-4)
    np.testing.assert_allclose(dense, ref, atol=1e-4)
    wrt = [x, low, *head.trainable_weights]
    for a, b in zip(tape.gradient(ls, wrt), tape.gradient(ld, wrt)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)
    if fraction == 0.0:
        assert float(tf.reduce_max(tf.abs(sparse))) == 0.0


def test_a_cell_is_decided_by_its_least_confident_sub_pixel():
    x = tf.random.stateless_normal([1, 6, 7, 6], seed=[7, 8])
    low = tf.random.stateless_normal([1, 24, 28, 5], seed=[8, 9])
    head = _head()
    probs, _ = head(x, region=tf.ones([1, 6, 7], tf.bool), low_level=low)
    conf = tf.nn.space_to_depth(tf.reduce_max(probs, -1, keepdims=True), F).numpy().min(-1)  # [1, 6, 7]
    rho = float(np.quantile(conf, 0.5))
    region = blob_region((1, 6, 7), 0.7, seed=1)
    _, forwarded = head(x, region=RegionIndex(tf.constant(region)), rho=rho, low_level=low)
    np.testing.assert_array_equal(forwarded, region & (conf < rho))
    assert 0 < forwarded.numpy().sum() < region.sum()


def test_lite_cascade_with_decoder_heads(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_model("efficientnet_lite0", num_classes=4, rho=0.9, ignore_class=4, head="decoder",
                        dense_threshold=None)
    assert model.decoder and model.upsample == 4 and model.heads[1].decoder_channels == 48
    images = np.random.default_rng(0).integers(0, 256, size=(2, 72, 88, 3)).astype(np.uint8)
    stage1 = model(images, rho=1.0)["stage1"].numpy()
    assert stage1.shape == (2, 20, 24, 4)  # stride 4 of the images padded to 80×96 (pad_to 16): a 5×6 stage grid
    conf = tf.nn.space_to_depth(stage1.max(-1, keepdims=True), 4).numpy().min(-1)
    rho = float(np.quantile(conf, 0.5))
    a, b = model(images, rho=rho), model.forward_details(images, rho=rho, dense=True)
    share = float(tf.reduce_mean(tf.cast(a["stage"] > 1, tf.float32)))
    assert 0.0 < share < 1.0
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    np.testing.assert_array_equal(a["stage"], b["stage"])
    model.pad_to = None  # unpadded: a stride-4 map smaller than 4× the grid ("same" sizes), still region-exact
    a, b = model(images, rho=rho), model.forward_details(images, rho=rho, dense=True)
    assert a["stage1"].shape == (2, 18, 22, 4)
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    model.pad_to = 16
    # the final map takes each sub-pixel from its cell's deciding stage
    stage = model.forward_details(images, rho=rho)
    fine = model.at_output_grid(stage["regions"][1], stage["probs_per_stage"][0]).numpy()
    p1, p2 = (p.numpy() for p in stage["probs_per_stage"][:2])
    assert np.all(p2[~fine] == 0) and np.all(p2[fine].sum(-1) > 0.99) and np.all(p1.sum(-1) > 0.99)
    # both training modes take a step; losses finite
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    labels = np.random.default_rng(1).integers(0, 5, size=images.shape[:3]).astype(np.int32)
    for mode in ("initial", "cascade"):
        model.training_mode = mode
        logs = model.train_on_batch(images, labels, return_dict=True)
        assert np.isfinite(logs["loss"]) and logs["stage3_loss"] > 0
    path = tmp_path / "dec.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.decoder and loaded.heads[2].decoder_channels == 48
    ref = model(images, rho=rho)
    np.testing.assert_allclose(loaded(images, rho=rho)["probs"], ref["probs"], atol=1e-6)
    # the SavedModel's ρ-tensor signature serves the same map
    from keras_lc.export import export_savedmodel

    saved = tf.saved_model.load(str(export_savedmodel(model, tmp_path / "sm", "lc", 1)))
    out = saved.signatures["serving_rho"](images=tf.constant(images), rho=tf.constant(rho))
    np.testing.assert_array_equal(out["stage"], ref["stage"])
    assert np.mean(out["labels"].numpy() == ref["labels"].numpy()) > 0.999


def test_decoder_errors():
    with pytest.raises(ValueError, match="needs an EfficientNet-Lite backbone"):
        build_model("tiny", num_classes=3, head="decoder", **SMALL)
    with pytest.raises(ValueError, match="ASPP or a decoder"):
        StageHead(3, aspp_rates=(1, 2), decoder_channels=8, upsample=4)
    with pytest.raises(ValueError, match="upsample needs a decoder"):
        StageHead(3, upsample=4)
    head = _head()
    with pytest.raises(ValueError, match="needs low_level"):
        head(tf.zeros([1, 3, 3, 6]), region=tf.ones([1, 3, 3], tf.bool))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="larger than upsample"):
        head(tf.zeros([1, 3, 3, 6]), region=tf.ones([1, 3, 3], tf.bool), low_level=tf.zeros([1, 13, 12, 5]))


def test_lite_decoder_heads_with_a_halo_stay_region_exact():
    tf.keras.utils.set_random_seed(1)
    model = build_model("efficientnet_lite0", num_classes=4, rho=0.9, ignore_class=4, head="decoder",
                        dense_threshold=None, halo=1)
    images = np.random.default_rng(2).integers(0, 256, size=(2, 128, 144, 3)).astype(np.uint8)  # an 8×9 grid
    conf = tf.nn.space_to_depth(model(images, rho=1.0)["stage1"].numpy().max(-1, keepdims=True), 4).numpy().min(-1)
    rho = float(np.quantile(conf, 0.8))  # ~20% of the cells decided at stage 1
    a, b = model.forward_details(images, rho=rho, path="region"), model.forward_details(images, rho=rho, path="dense")
    r2, r3 = a["regions"][1].numpy(), a["regions"][2].numpy()
    grown = tf.nn.max_pool2d(r2[..., None].astype(np.float32), 3, 1, "SAME").numpy()[..., 0] > 0
    assert 0.0 < r2.mean() < grown.mean() <= 1.0  # the halo adds cells that stage 2 computes but does not decide
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    np.testing.assert_array_equal(a["stage"], b["stage"])
    for x, y in zip(a["probs_per_stage"], b["probs_per_stage"]):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert not np.any(r3 & ~r2)  # a halo cell is context only: never forwarded
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    labels = np.random.default_rng(3).integers(0, 5, size=images.shape[:3]).astype(np.int32)
    model.training_mode = "cascade"
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["stage3_loss"] > 0
