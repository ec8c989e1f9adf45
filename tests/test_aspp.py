"""The ASPP stage head (DeepLab-v2): region path against the dense Keras ASPP with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

from keras_lc import build_model
from keras_lc.benchmark import blob_region
from keras_lc.config import TrainConfig
from keras_lc.layers import RegionIndex
from keras_lc.layers.stage_head import StageHead
from keras_lc.models.factory import default_aspp_rates

RATES = (1, 2, 5)


def _head(channels=6, num_classes=4, rates=RATES):
    tf.keras.utils.set_random_seed(3)
    head = StageHead(num_classes, hidden_channels=8, aspp_rates=rates)
    head.build((None, None, None, channels))
    for w in head.weights:  # non-trivial norms and biases
        w.assign(tf.random.normal(w.shape, stddev=0.5) + (1.0 if "gamma" in w.path else 0.0))
    return head


def _keras_aspp_logits(head, x):
    """The dense ASPP from stock Keras layers, the head's weights copied in."""
    total = 0.0
    for (conv, norm, classifier), rate in zip(head.branches(), head.aspp_rates):
        c = keras.layers.Conv2D(head.hidden_channels, 3, dilation_rate=rate, padding="same", use_bias=False)
        c.build(x.shape)
        c.set_weights(conv.get_weights())
        n = keras.layers.LayerNormalization(epsilon=1e-5)
        n.build((None, head.hidden_channels))
        n.set_weights(norm.get_weights())
        k = keras.layers.Conv2D(head.num_classes, 1)
        k.build((None, None, None, head.hidden_channels))
        k.set_weights(classifier.get_weights())
        total = total + k(tf.nn.relu(n(c(x))))
    return total


def test_full_region_equals_dense_keras_aspp():
    x = tf.random.stateless_normal([2, 13, 11, 6], seed=[1, 2])
    head = _head()
    probs, _, logits = head(x, region=tf.ones([2, 13, 11], tf.bool), return_logits=True)
    ref = _keras_aspp_logits(head, x)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    np.testing.assert_allclose(probs, tf.nn.softmax(ref), atol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.4, 0.8])
def test_region_equals_masked_dense_and_gradients(fraction):
    x = tf.random.stateless_normal([2, 15, 17, 6], seed=[4, 5])
    region = tf.constant(blob_region((2, 15, 17), fraction, seed=7) if fraction else np.zeros((2, 15, 17), bool))
    head = _head()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        _, _, sparse = head(x, region=RegionIndex(region), return_logits=True)
        _, _, dense = head(x, region=RegionIndex(region, dense=True), return_logits=True)
        ls, ld = tf.reduce_sum(sparse ** 2), tf.reduce_sum(dense ** 2)
    ref = _keras_aspp_logits(head, x) * tf.cast(region[..., None], tf.float32)
    np.testing.assert_allclose(sparse, ref, atol=1e-4)
    np.testing.assert_allclose(dense, ref, atol=1e-4)
    for a, b in zip(tape.gradient(ls, [x, *head.trainable_weights]), tape.gradient(ld, [x, *head.trainable_weights])):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)
    if fraction == 0.0:
        assert float(tf.reduce_max(tf.abs(sparse))) == 0.0


def test_aspp_cascade_round_trip_and_dense_reference(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None, head="aspp",
                        aspp_rates=(1, 2), **SMALL)
    assert model.heads[2].aspp_rates == (1, 2) and len(model.heads[2].trainable_weights) == 10
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
    rho = float(np.quantile(model(images, rho=1.0)["stage1"].numpy().max(-1), 0.6))
    a, b = model(images, rho=rho), model.forward_details(images, rho=rho, dense=True)
    assert 0.0 < float(tf.reduce_mean(tf.cast(a["stage"] > 1, tf.float32))) < 1.0
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    path = tmp_path / "aspp.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.heads[0].aspp_rates == (1, 2)
    np.testing.assert_allclose(loaded(images, rho=rho)["probs"], a["probs"], atol=1e-6)


def test_default_rates_and_errors():
    assert default_aspp_rates(8) == (6, 12, 18, 24)
    assert default_aspp_rates(16) == (3, 6, 9, 12)
    model = build_model("tiny", num_classes=3, head="aspp", **SMALL)
    assert model.heads[0].aspp_rates == default_aspp_rates(4)
    with pytest.raises(ValueError, match="head must be one of"):
        build_model("tiny", num_classes=3, head="deeplab", **SMALL)
    with pytest.raises(ValueError, match="aspp_rates needs head='aspp'"):
        build_model("tiny", num_classes=3, aspp_rates=(2, 4), **SMALL)
    with pytest.raises(ValueError, match="aspp_rates must be positive integers"):
        StageHead(3, aspp_rates=(0, 2))
    with pytest.raises(ValueError, match=r"aspp_rates \(--aspp-rates\) must be positive integers"):
        TrainConfig(head="aspp", aspp_rates="6,x")


def test_plain_head_weight_paths_unchanged(tmp_path):
    """Saved plain heads keep loading: the file keeps their weights at conv/norm/classifier, as before ASPP,
    and the committed models load without a warning."""
    import io
    import warnings
    import zipfile
    from pathlib import Path

    import h5py

    model = build_model("tiny", num_classes=3, **SMALL)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        assert sorted(f["heads/stage_head"]) == ["classifier", "conv", "norm", "vars"]
    aspp = build_model("tiny", num_classes=3, head="aspp", aspp_rates=(1, 2), **SMALL)
    aspp.save(tmp_path / "a.keras")
    with zipfile.ZipFile(tmp_path / "a.keras") as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        assert sorted(f["heads/stage_head"]) == ["aspp_classifiers", "aspp_convs", "aspp_norms", "vars"]
    for path in sorted((Path(__file__).parents[1] / "saved_models").glob("*.keras")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            keras.models.load_model(path)


def test_aspp_model_exports_to_savedmodel_and_onnx(tmp_path):
    import onnxruntime as ort

    from keras_lc.export import export_onnx, export_savedmodel

    tf.keras.utils.set_random_seed(2)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, head="aspp", aspp_rates=(1, 3), **SMALL)
    images = np.random.default_rng(3).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
    rho = float(np.quantile(model(images, rho=1.0)["stage1"].numpy().max(-1), 0.5))
    ref = model(images, rho=rho)
    saved = tf.saved_model.load(str(export_savedmodel(model, tmp_path / "sm", "lc", 1)))
    out = saved.signatures["serving_rho"](images=tf.constant(images), rho=tf.constant(rho))
    np.testing.assert_array_equal(out["labels"], ref["labels"])
    np.testing.assert_array_equal(out["stage"], ref["stage"])
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"images": images, "rho": np.array(rho, np.float32)})))
    np.testing.assert_array_equal(got["stage"], ref["stage"])
    assert np.mean(got["labels"] == ref["labels"].numpy()) > 0.999
