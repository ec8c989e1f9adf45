"""`pad_to`: images padded bottom/right to a multiple of the stage grid's stride, outputs cropped back."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

from keras_lc import build_model
from keras_lc.cli import _load
from keras_lc.layers.region_index import grid_padding


@pytest.fixture(scope="module")
def pad_model(small_model):
    """A copy of the session's small model (stride 4; its pad_to is changed by these tests)."""
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None, **SMALL)
    model.set_weights(small_model.get_weights())
    return model


@pytest.fixture(scope="module")
def odd_images():
    """30 x 38: neither side a multiple of the stride 4 (the second strided conv sees 15 rows)."""
    return np.random.default_rng(1).integers(0, 256, size=(2, 30, 38, 3)).astype(np.float32)


@pytest.mark.parametrize("size", [1, 15, 16, 17, 45, 360, 481])
def test_grid_padding_makes_multiples_for_ints_and_tensors(size):
    dh, dw = grid_padding(size, size + 3, 16)
    assert (size + dh) % 16 == 0 and 0 <= dh < 16 and (size + 3 + dw) % 16 == 0 and 0 <= dw < 16
    th, tw = grid_padding(tf.constant(size), tf.constant(size + 3), 16)
    assert (int(th), int(tw)) == (dh, dw)
    assert grid_padding(size, size, None) == (0, 0)


def test_build_model_pads_to_the_stage_grids_stride():
    assert build_model("tiny", num_classes=3, **SMALL).pad_to == 4
    assert build_model("efficientnet_lite0", num_classes=3, output_stride=8).pad_to == 8


def test_padded_image_is_the_image_on_a_gray_canvas(pad_model, odd_images):
    """The outputs on a 30x38 image are those of a 32x40 gray canvas with the image at its top left, cropped:
    the grid lies on the image as on an image whose sides are multiples of the stride."""
    canvas = np.full((2, 32, 40, 3), 127.5, np.float32)
    canvas[:, :30, :38] = odd_images
    pad_model.pad_to = 4
    out = pad_model(odd_images, rho=0.9)
    ref = pad_model(canvas, rho=0.9)
    assert out["probs"].shape == (2, 30, 38, 4) and out["stage"].shape == (2, 30, 38)
    np.testing.assert_allclose(out["probs"], ref["probs"][:, :30, :38], atol=1e-5)
    np.testing.assert_array_equal(out["stage"], ref["stage"][:, :30, :38])
    np.testing.assert_allclose(out["stage1"], ref["stage1"], atol=1e-5)  # the same 8 x 10 grid
    pad_model.pad_to = None
    unpadded = pad_model(odd_images, rho=0.9)
    assert unpadded["stage1"].shape == out["stage1"].shape  # ceil(30 / 4) either way ...
    assert not np.allclose(unpadded["stage1"], out["stage1"], atol=1e-3)  # ... but the grid is shifted


def test_aligned_images_are_not_changed(pad_model, images):
    pad_model.pad_to = 4
    padded = pad_model(images, rho=0.9)["probs"]
    pad_model.pad_to = None
    np.testing.assert_allclose(padded, pad_model(images, rho=0.9)["probs"], atol=1e-6)


@pytest.mark.parametrize("resolution", ["stage", "input"])
def test_padding_stays_out_of_the_losses(pad_model, odd_images, resolution):
    """Stage losses of a padded image equal those of the gray canvas with its padding labelled void."""
    labels = np.random.default_rng(2).integers(0, 4, size=(2, 30, 38)).astype(np.int32)
    canvas = np.full((2, 32, 40, 3), 127.5, np.float32)
    canvas[:, :30, :38] = odd_images
    canvas_labels = np.full((2, 32, 40), 4, np.int32)
    canvas_labels[:, :30, :38] = labels
    pad_model.loss_resolution = resolution
    pad_model.pad_to = 4
    try:
        got = pad_model.stage_losses(pad_model.forward_details(odd_images, forward_all=True), tf.constant(labels))
        want = pad_model.stage_losses(pad_model.forward_details(canvas, forward_all=True), tf.constant(canvas_labels))
    finally:
        pad_model.loss_resolution = "stage"
    np.testing.assert_allclose([float(v) for v in got], [float(v) for v in want], rtol=1e-5)


def test_pad_to_survives_save_and_load(tmp_path, odd_images):
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, **SMALL)
    path = tmp_path / "pad.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.pad_to == 4
    np.testing.assert_allclose(loaded(odd_images)["probs"], model(odd_images)["probs"], atol=1e-6)
    assert _load(str(path), pad_to=0).pad_to is None  # the CLI's --pad-to 0
    with pytest.raises(SystemExit, match="--pad-to must be an integer >= 0"):
        _load(str(path), pad_to=-1)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "4"])
def test_bad_pad_to_is_a_clear_error(pad_model, bad):
    pad_model.pad_to = None
    with pytest.raises(ValueError, match="pad_to must be an integer >= 1"):
        pad_model.pad_to = bad
    assert pad_model.pad_to is None


def test_stage_maps_of_the_figures_follow_the_padding():
    from keras_lc.viz import stage_label_maps

    grid = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # [2, 1, K=2]: the top cell class 0, the bottom 1
    outputs = {f"stage{k}": grid for k in (1, 2, 3)}
    padded = stage_label_maps(outputs, 6, 3, pad_to=4)[0]  # the grid covers 8 rows: 4 per cell
    assert padded.shape == (6, 3)
    np.testing.assert_array_equal(padded[:, 0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(stage_label_maps(outputs, 6, 3)[0][:, 0], [0, 0, 0, 1, 1, 1])
