"""folded_batchnorm: the frozen BN folded once for inference gives the same numbers as folding per call."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lc import build_model
from keras_lc.export import export_savedmodel
from keras_lc.models import folded_batchnorm
from keras_lc.models.folding import is_folded


def _randomise_bn(model, seed):
    """Non-trivial statistics in every frozen BN, so that a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for bn in [w for w in model._flatten_layers() if isinstance(w, keras.layers.BatchNormalization)]:
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])


@pytest.fixture(scope="module")
def lite():
    tf.keras.utils.set_random_seed(5)
    model = build_model("efficientnet_lite0", num_classes=4, rho=0.6, dense_threshold=None, halo=1)
    _randomise_bn(model, 6)
    images = np.random.default_rng(2).integers(0, 256, (2, 64, 96, 3)).astype(np.uint8)
    rho = float(np.quantile(model(images, rho=1.0)["stage1"].numpy().max(-1), 0.5))
    return model, images, rho


def _mul_ops(concrete):
    """Mul ops in a concrete function's graph and the functions it calls (the tf.cond branches)."""
    graphs = [concrete.graph.as_graph_def()]
    ops = [n.op for n in graphs[0].node] + [n.op for f in graphs[0].library.function for n in f.node_def]
    return ops.count("Mul")


def test_folded_forward_equals_per_call_folding(lite):
    model, images, rho = lite

    def forward(x):
        out = model.forward_details(x, rho=rho)
        return out["probs_per_stage"], out["stage"]

    plain = tf.function(forward)
    ref_probs, ref_stage = plain(images)
    assert 0 < (ref_stage.numpy() > 1).mean() < 1  # partial regions: the region path runs
    with folded_batchnorm(model) as variables:
        assert is_folded(model) and len(variables) == 2 * 48  # stem, 15 expand, 16 depthwise, 16 project convs
        folded = tf.function(forward)
        probs, stage = folded(images)
        eager = model.forward_details(images, rho=rho)["probs_per_stage"]
        fewer = _mul_ops(folded.get_concrete_function(images))
    assert not is_folded(model)
    for a, b, c in zip(probs, ref_probs, eager):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(c, b, atol=1e-5)
    np.testing.assert_array_equal(stage, ref_stage)
    assert fewer < _mul_ops(plain.get_concrete_function(images)) - 40  # the per-call folding is gone


def test_folded_weights_are_a_snapshot_and_the_context_cleans_up(lite):
    model, images, rho = lite
    bn = model.stages[2].blocks[-1].project.bn
    mean = bn.moving_mean.numpy()
    try:
        with folded_batchnorm(model):
            with folded_batchnorm(model) as inner:  # nested: the outer context's variables
                assert len(inner) == 96
            fn = tf.function(lambda x: model.forward_details(x, rho=1.0)["probs"])
            before = fn(images).numpy()
            bn.moving_mean.assign(mean + 1.0)
            np.testing.assert_array_equal(fn(images), before)  # traced inside: the weights of that moment
            raise KeyError("boom")
    except KeyError:
        pass
    try:
        assert not is_folded(model)  # left on an exception too
        after = model.forward_details(images, rho=1.0)["probs"].numpy()
        assert np.abs(after - before).max() > 1e-3  # outside: the current weights again
    finally:
        bn.moving_mean.assign(mean)


def test_fit_inside_the_context_is_refused(lite):
    model, images, _ = lite
    labels = np.zeros(images.shape[:3], np.int32)
    with folded_batchnorm(model), pytest.raises(RuntimeError, match="fit inside folded_batchnorm"):
        model.train_step((images, labels))


def test_savedmodel_reads_the_folded_weights(lite, tmp_path):
    model, images, rho = lite
    loaded = tf.saved_model.load(str(export_savedmodel(model, tmp_path, "lite", 1, include_probs=True)))
    assert len(loaded.folded_weights) == 96 and not is_folded(model)
    out = loaded.signatures["serving_rho"](images=tf.constant(images), rho=tf.constant(rho))
    ref = model(images, rho=rho)
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    np.testing.assert_array_equal(out["stage"], ref["stage"])
