"""The `halo` option: stages 2-3 compute on their region grown by a few cells, as context only."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

from keras_lc import build_model
from keras_lc.config import TrainConfig
from keras_lc.layers.region_index import grow_region


@pytest.fixture(scope="module")
def halo_model(small_model):
    """A copy of the session's small model (its halo is changed by these tests)."""
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None, **SMALL)
    model.set_weights(small_model.get_weights())
    return model


def _partial_rho(model, images, quantile=0.6):
    p1 = model(images, rho=1.0)["stage1"].numpy().max(-1)
    return float(np.quantile(p1, quantile))


def _grow_reference(region, halo):
    """Numpy: a cell is in the grown region when some region cell is within Chebyshev distance `halo`."""
    b, h, w = region.shape
    out = np.zeros_like(region)
    for i, y, x in zip(*np.nonzero(region)):
        out[i, max(0, y - halo):y + halo + 1, max(0, x - halo):x + halo + 1] = True
    return out


@pytest.mark.parametrize("halo", [0, 1, 2, 5])
def test_grow_region_is_the_chebyshev_neighbourhood(halo):
    region = np.random.default_rng(halo).random((3, 9, 11)) < 0.08
    region[2] = False  # an empty image stays empty
    grown = grow_region(tf.constant(region), halo).numpy()
    np.testing.assert_array_equal(grown, _grow_reference(region, halo))
    assert not grown[2].any() and np.all(grown >= region)


def test_halo_region_path_equals_masked_dense_reference(halo_model, images):
    rho = _partial_rho(halo_model, images)
    halo_model.halo = 1
    try:
        sparse = halo_model.forward_details(images, rho=rho, path="region")
        dense = halo_model.forward_details(images, rho=rho, path="dense")
    finally:
        halo_model.halo = 0
    assert 0 < sparse["regions"][2].numpy().mean() < sparse["regions"][1].numpy().mean() < 1
    for key in ("probs", "stage"):
        np.testing.assert_allclose(sparse[key], dense[key], atol=1e-5)
    for a, b in zip(sparse["probs_per_stage"], dense["probs_per_stage"]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_halo_covering_the_grid_gives_the_dense_stages_under_the_cascades_decisions(halo_model, images):
    rho = _partial_rho(halo_model, images)
    plain = halo_model.forward_details(images, rho=rho)
    halo_model.halo = 100  # larger than the 8x10 stage grid
    try:
        wide = halo_model.forward_details(images, rho=rho)
    finally:
        halo_model.halo = 0
    full = halo_model.forward_details(images, rho=1.0)  # every stage dense, on every pixel
    r2, r3 = wide["regions"][1].numpy(), wide["regions"][2].numpy()
    np.testing.assert_array_equal(r2, plain["regions"][1].numpy())  # stage 1 is not touched
    p2_dense = full["probs_per_stage"][1].numpy()
    np.testing.assert_array_equal(r3, r2 & (p2_dense.max(-1) < rho))  # stage 2 decides its own region
    for b in range(len(images)):
        assert r2[b].any() and r3[b].any(), "the test needs every image to forward pixels to stage 3"
        for k in (1, 2):
            np.testing.assert_allclose(wide["probs_per_stage"][k][b], full["probs_per_stage"][k][b], atol=1e-5)
    combined = np.where(r3[..., None], full["probs_per_stage"][2], np.where(
        r2[..., None], full["probs_per_stage"][1], full["probs_per_stage"][0]))
    expected = tf.image.resize(combined, images.shape[1:3], method="bilinear").numpy()
    np.testing.assert_allclose(wide["probs"], expected, atol=1e-5)
    # and the context changes what stages 2-3 output at the region's edge
    assert np.abs(wide["probs_per_stage"][2].numpy()[r3] - plain["probs_per_stage"][2].numpy()[r3]).max() > 1e-4


def test_halo_cells_are_context_only(halo_model, images):
    """Stage k's output covers the grown region, but it decides, forwards and is trained only on its region."""
    rho = _partial_rho(halo_model, images, quantile=0.3)
    halo_model.halo = 1
    labels = np.random.default_rng(3).integers(0, 4, size=images.shape[:3])
    try:
        feats = halo_model.run_stage(1, halo_model.preprocess(images), rho=rho)
        region = feats["next_region"]
        s2 = halo_model.run_stage(2, feats["features"], region, rho=rho)
        with tf.GradientTape() as tape:
            out = halo_model.forward_details(images, rho=rho, training=True, path="region")
            loss = tf.add_n(halo_model.stage_losses(out, labels))
        g2, g3 = tape.gradient(loss, [out["logits"][1], out["logits"][2]])
    finally:
        halo_model.halo = 0
    region, grown = region.numpy(), grow_region(region, 1).numpy()
    assert (grown & ~region).any(), "the test needs halo cells"
    computed = s2["probs"].numpy().sum(-1) > 0.5
    np.testing.assert_array_equal(computed, grown)
    assert np.all(s2["next_region"].numpy() <= region)
    for g, r in ((g2, out["regions"][1]), (g3, out["regions"][2])):
        g, r = g.numpy(), r.numpy()
        assert not g[~r].any() and np.abs(g[r]).sum() > 0


def test_halo_training_gradients_agree_between_paths(halo_model, images):
    rho = _partial_rho(halo_model, images)
    labels = np.random.default_rng(4).integers(0, 4, size=images.shape[:3])

    def grads(path):
        with tf.GradientTape() as tape:
            out = halo_model.forward_details(images, rho=rho, path=path)
            loss = tf.add_n(halo_model.stage_losses(out, labels))
        return tape.gradient(loss, halo_model.trainable_variables)

    halo_model.halo = 2
    try:
        for a, b in zip(grads("region"), grads("dense")):
            np.testing.assert_allclose(a, b, atol=1e-4)
    finally:
        halo_model.halo = 0


def test_halo_survives_save_and_load(images, tmp_path):
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, halo=1, **SMALL)
    path = tmp_path / "halo.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.halo == 1
    np.testing.assert_allclose(loaded(images)["probs"], model(images)["probs"], atol=1e-6)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_halo_is_a_clear_error(halo_model, bad):
    with pytest.raises(ValueError, match="halo must be an integer >= 0"):
        halo_model.halo = bad
    assert halo_model.halo == 0


def test_halo_in_the_train_config():
    assert TrainConfig(halo=2).head_kwargs()["halo"] == 2
    with pytest.raises(ValueError, match="halo must be at least 0"):
        TrainConfig(halo=-1)


def test_cli_halo_overrides_the_saved_models(tmp_path, capsys):
    from keras_lc.cli import main

    path = tmp_path / "m.keras"
    build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, **SMALL).save(path)
    data = ["--num-images", "2", "--image-size", "32", "--num-classes", "4", "--batch-size", "2"]
    main(["evaluate", str(path), "--halo", "1", "--json", str(tmp_path / "e.json"), *data])
    assert "mIoU" in capsys.readouterr().out
    main(["bench", str(path), "--halo", "1", "--height", "32", "--width", "32", "--rho", "0.9", "--repeats", "1"])
    assert "halo 1: stages 2-3 also compute 1 cell(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--halo must be an integer >= 0"):
        main(["evaluate", str(path), "--halo", "-2", *data])
