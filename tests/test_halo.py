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


# ------------------------------------------------- halo_mode="depthwise" (EfficientNet-Lite stages)
def _lite_stage(stage, seed):
    from test_efficientnet_lite import _randomise_bn

    from keras_lc.models.efficientnet_lite import EfficientNetLiteStage

    layer = EfficientNetLiteStage(stage, "efficientnet_lite0", 16)
    layer.build((None, None, None, layer.blocks[0].input_channels))
    _randomise_bn(layer, seed)
    return layer


def _depthwise_context_reference(stage, x, region, grown):
    """Independent masked-dense reference built from Keras' own BN layers (nothing folded): the halo
    cells (grown and not region) feed each block's depthwise conv through its expand conv only; they
    keep their features through residual blocks and are computed in full by channel-changing blocks
    (except the last, whose output is read on the region only)."""
    from test_efficientnet_lite import _keras_bn, _unit_reference

    core, ctx = tf.constant(region[..., None], tf.float32), tf.constant(grown[..., None], tf.float32)
    for i, block in enumerate(stage.blocks):
        t = _unit_reference(block.expand, x) if block.expand is not None else x
        t = tf.nn.depthwise_conv2d(t * ctx, block.depthwise.kernel, [1, 1, 1, 1], "SAME",
                                   dilations=block.depthwise.dilation_rate)
        t = _unit_reference(block.project, tf.nn.relu6(_keras_bn(block.depthwise_bn, t)))
        if block.residual:
            x = x + t * core
        elif i < len(stage.blocks) - 1:
            x = t * ctx
        else:
            x = t
    return x * core


@pytest.mark.parametrize("stage_number", [2, 3])
@pytest.mark.parametrize("fraction", [0.15, 0.4])
def test_depthwise_halo_stage_equals_its_reference_on_both_paths(stage_number, fraction):
    from keras_lc.benchmark import blob_region
    from keras_lc.layers import RegionIndex

    stage = _lite_stage(stage_number, seed=stage_number)
    x = tf.random.stateless_normal([2, 9, 11, stage.blocks[0].input_channels], seed=[5, stage_number])
    region = blob_region((2, 9, 11), fraction, seed=int(fraction * 10))
    grown = grow_region(tf.constant(region), 1).numpy()
    assert (grown & ~region).any()
    want = _depthwise_context_reference(stage, x, region, grown)

    def run(dense):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = stage(x, region=RegionIndex(region, dense=dense), context=RegionIndex(grown, dense=dense))
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, [x, *stage.trainable_variables])

    (y_fast, g_fast), (y_dense, g_dense) = run(False), run(True)
    np.testing.assert_allclose(y_fast, want, atol=1e-4)
    np.testing.assert_allclose(y_dense, want, atol=1e-4)
    for a, b in zip(g_fast, g_dense):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
    # the context changes the region's output; a context equal to the region is the plain stage
    plain = stage(x, region=RegionIndex(region))
    assert np.abs(y_fast.numpy() - plain.numpy()).max() > 1e-3
    np.testing.assert_allclose(stage(x, region=RegionIndex(region), context=RegionIndex(region)), plain, atol=1e-5)


@pytest.fixture(scope="module")
def lite_halo_model():
    from test_efficientnet_lite import _randomise_bn

    tf.keras.utils.set_random_seed(5)
    model = build_model("efficientnet_lite0", num_classes=4, dense_threshold=None, halo=1, halo_mode="depthwise")
    for layer in model.stages[1:]:
        _randomise_bn(layer, 6)
    return model


def test_depthwise_halo_cascade_region_path_equals_dense_path(lite_halo_model):
    images = np.random.default_rng(2).integers(0, 256, (2, 96, 128, 3)).astype(np.uint8)
    p1 = lite_halo_model(images, rho=1.0)["stage1"].numpy().max(-1)
    rho = float(np.quantile(p1, 0.5))
    fast = lite_halo_model.forward_details(images, rho=rho, path="region")
    ref = lite_halo_model.forward_details(images, rho=rho, path="dense")
    r2 = fast["regions"][1].numpy()
    assert 0 < r2.mean() < 1 and (grow_region(r2, 1).numpy() & ~r2).any()
    for a, b in zip(fast["probs_per_stage"], ref["probs_per_stage"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(fast["stage"], ref["stage"])
    # the heads run on the region only: stage 2's probabilities are zero on its halo cells
    computed = fast["probs_per_stage"][1].numpy().sum(-1) > 0.5
    np.testing.assert_array_equal(computed, r2)
    lite_halo_model.halo_mode = "full"
    try:
        full = lite_halo_model.forward_details(images, rho=rho, path="region")
    finally:
        lite_halo_model.halo_mode = "depthwise"
    assert np.abs(full["probs_per_stage"][1].numpy()[r2] - fast["probs_per_stage"][1].numpy()[r2]).max() > 1e-4


def test_depthwise_halo_mode_save_load_and_errors(lite_halo_model, tmp_path):
    path = tmp_path / "dw.keras"
    lite_halo_model.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.halo, loaded.halo_mode) == (1, "depthwise")
    x = np.random.default_rng(0).integers(0, 256, (1, 64, 80, 3)).astype(np.uint8)
    np.testing.assert_allclose(loaded(x, rho=0.6)["probs"], lite_halo_model(x, rho=0.6)["probs"], atol=1e-6)
    with pytest.raises(ValueError, match="halo_mode must be one of"):
        loaded.halo_mode = "expand"
    with pytest.raises(ValueError, match="needs MBConv stages"):
        build_model("tiny", num_classes=4, halo=1, halo_mode="depthwise", **SMALL)
    with pytest.raises(ValueError, match="halo_mode must be one of"):
        TrainConfig(halo_mode="half")
    assert TrainConfig(halo=1, halo_mode="depthwise").head_kwargs()["halo_mode"] == "depthwise"


def test_cli_halo_mode(tmp_path, monkeypatch):
    from keras_lc import cli, training

    path = tmp_path / "m.keras"
    build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, **SMALL).save(path)
    with pytest.raises(SystemExit, match="--halo-mode: halo_mode='depthwise' needs MBConv stages"):
        cli.main(["evaluate", str(path), "--halo-mode", "depthwise", "--num-images", "2", "--image-size", "32"])
    seen = {}
    monkeypatch.setattr(training, "train_cascade", lambda model, *a, **kw: seen.update(model=model))
    cli.main(["train", "--backbone", "efficientnet_lite0", "--num-images", "2", "--image-size", "32", "--halo", "1",
              "--halo-mode", "depthwise", "--out", str(tmp_path)])
    assert (seen["model"].halo, seen["model"].halo_mode) == (1, "depthwise")
