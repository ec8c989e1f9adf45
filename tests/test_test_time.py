"""Test-time additions of §4.2: multi-scale (and flipped) testing and dense CRF post-processing."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_lc import LayerCascade, crf
from keras_lc.metrics import evaluate_cascade


def test_one_scale_equals_the_plain_call(small_model, images):
    plain = small_model(images)
    multi = small_model.predict_multiscale(images, scales=(1.0,))
    np.testing.assert_allclose(multi["probs"], plain["probs"], atol=1e-6)
    np.testing.assert_array_equal(multi["labels"], plain["labels"])
    np.testing.assert_array_equal(multi["stage"], plain["stage"])
    share = [float(np.mean(plain["stage"].numpy() == k)) for k in (1, 2, 3)]
    np.testing.assert_allclose(multi["stage_share"][0], share, atol=1e-6)


class _ConstantPerScale:
    """A stand-in cascade whose probabilities are constant per input width (so per scale), and which
    puts class 0 on the left half / class 1 on the right half when `sided` (to see the flip)."""

    def __init__(self, table, sided=False):
        self.table, self.sided = table, sided

    def preprocess(self, x):
        return x

    def __call__(self, x, rho=None, training=False):
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        p = np.broadcast_to(np.asarray(self.table[w], np.float32), (b, h, w, 3)).copy()
        if self.sided:  # the mean of the left column decides which side gets the evidence
            left = float(tf.reduce_mean(tf.cast(x[:, :, : w // 2], tf.float32))) > 100
            p[:, :, : w // 2] = [1.0, 0, 0] if left else [0, 1.0, 0]
            p[:, :, w // 2:] = [0, 1.0, 0] if left else [1.0, 0, 0]
        stage = np.ones((b, h, w), np.uint8) + (np.arange(w) >= w // 2).astype(np.uint8)
        return {"probs": tf.constant(p), "stage": tf.constant(stage)}


def test_fusion_of_two_constant_scales_is_the_hand_value():
    stub = _ConstantPerScale({4: [0.6, 0.3, 0.1], 8: [0.2, 0.7, 0.1]})
    images = np.zeros((1, 8, 8, 3), np.float32)
    mean = LayerCascade.predict_multiscale(stub, images, scales=(0.5, 1.0))
    np.testing.assert_allclose(mean["probs"][0, 3, 3], [0.4, 0.5, 0.1], atol=1e-6)
    assert int(mean["labels"][0, 3, 3]) == 1
    top = LayerCascade.predict_multiscale(stub, images, scales=(0.5, 1.0), fusion="max")
    np.testing.assert_allclose(top["probs"][0, 3, 3], [0.6, 0.7, 0.1], atol=1e-6)
    np.testing.assert_allclose(mean["stage_share"], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    assert mean["stage"].shape == (1, 8, 8)


def test_flip_mirrors_back_before_averaging():
    stub = _ConstantPerScale({8: [0, 0, 1.0]}, sided=True)
    images = np.zeros((1, 8, 8, 3), np.float32)
    images[:, :, :4] = 200.0  # bright left half: the plain pass says class 0 left, class 1 right
    out = LayerCascade.predict_multiscale(stub, images, scales=(1.0,), flip=True)
    # The mirrored pass sees the bright half on the right: class 0 on its right, i.e. the original's left.
    np.testing.assert_allclose(out["probs"][0, 0, 0], [1.0, 0, 0])
    np.testing.assert_allclose(out["probs"][0, 0, 7], [0, 1.0, 0])


@pytest.mark.parametrize("scales", [(), (0.0,), (-1.0, 1.0), (float("nan"),), ("x",)])
def test_bad_scales_are_clear_errors(small_model, images, scales):
    with pytest.raises(ValueError, match="scales must be positive numbers"):
        small_model.predict_multiscale(images, scales=scales)


def test_bad_fusion(small_model, images):
    with pytest.raises(ValueError, match="fusion must be one of"):
        small_model.predict_multiscale(images, scales=(1.0,), fusion="median")


def test_evaluate_multiscale_reports_each_scale(small_model):
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 256, (2, 32, 40, 3)).astype(np.uint8), rng.integers(0, 4, (2, 32, 40)))]
    plain = evaluate_cascade(small_model, data)
    one = evaluate_cascade(small_model, data, scales=(1.0,))
    assert one["confusion_matrix"] == plain["confusion_matrix"] and one["scales"] == [1.0]
    two = evaluate_cascade(small_model, data, scales=(0.5, 1.0), flip=True)
    assert len(two["stage_share_per_scale"]) == 2
    np.testing.assert_allclose(two["stage_share_per_scale"][1], plain["stage_share"], atol=1e-6)
    np.testing.assert_allclose(np.sum(two["stage_share_per_scale"], axis=1), 1.0, atol=1e-6)


try:
    import pydensecrf.densecrf  # noqa: F401

    needs_crf = pytest.mark.skipif(False, reason="")
except ImportError:  # the `crf` extra is installed by `make test`
    needs_crf = pytest.mark.skip(reason="pydensecrf2 (extra crf) not installed")


@needs_crf
def test_crf_without_pairwise_terms_is_the_unary_argmax():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=(12, 16)).astype(np.float32)
    image = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    labels = crf.dense_crf(image, probs, {"gaussian_weight": 0, "bilateral_weight": 0})
    np.testing.assert_array_equal(labels, probs.argmax(-1))


@needs_crf
def test_crf_smooths_an_isolated_pixel():
    probs = np.full((20, 20, 2), [0.9, 0.1], np.float32)
    probs[10, 10] = [0.4, 0.6]  # a weakly different pixel in a flat image
    image = np.full((20, 20, 3), 128, np.uint8)
    assert probs.argmax(-1)[10, 10] == 1
    assert crf.dense_crf(image, probs)[10, 10] == 0


@needs_crf
def test_crf_in_evaluate_and_param_errors(small_model, tmp_path):
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 256, (2, 32, 40, 3)).astype(np.uint8), rng.integers(0, 4, (2, 32, 40)))]
    off = evaluate_cascade(small_model, data, crf={"gaussian_weight": 0, "bilateral_weight": 0})
    assert off["confusion_matrix"] == evaluate_cascade(small_model, data)["confusion_matrix"]
    assert off["crf"]["bilateral_weight"] == 0
    with pytest.raises(ValueError, match="unknown CRF parameters"):
        crf.check_params({"bilateral": 3})
    with pytest.raises(ValueError, match="must be a non-negative number"):
        crf.check_params({"bilateral_weight": -1})
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        crf.check_params({"iterations": 2.5})
    with pytest.raises(ValueError, match="not found"):
        crf.read_params(tmp_path / "none.json")
    (tmp_path / "crf.json").write_text('{"params": {"bilateral_weight": 5}}')
    assert crf.params_for_model(tmp_path / "m.keras")["bilateral_weight"] == 5.0
    assert crf.params_for_model(tmp_path / "m.keras", "deeplab") == crf.DEEPLAB_V2


@needs_crf
def test_tune_crf_reports_the_best_point():
    rng = np.random.default_rng(2)
    truth = np.zeros((16, 16), np.int64)
    truth[:, 8:] = 1
    image = np.repeat(np.where(truth[..., None] == 1, 200, 50), 3, axis=-1).astype(np.uint8)
    probs = np.where(truth[..., None] == 1, [0.3, 0.7], [0.7, 0.3]).astype(np.float32)
    flip = rng.random((16, 16)) < 0.15
    probs[flip] = probs[flip][:, ::-1]
    result = crf.tune_crf([(image, probs, truth)], 2, grid={"bilateral_weight": (0.0, 5.0)})
    assert [row["params"]["bilateral_weight"] for row in result["table"]] == [0.0, 5.0]
    assert result["miou"] == max(row["miou"] for row in result["table"]) > result["miou_without"]


def test_missing_crf_package_is_a_clear_error(monkeypatch, small_model):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match=r"pip install 'keras_lc\[crf\]'"):
        crf.dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 2), 0.5, np.float32))
    with pytest.raises(ImportError, match="pydensecrf2"):
        evaluate_cascade(small_model, [], crf={})


def test_cli_evaluate_and_bench_with_scales(small_model, tmp_path, capsys):
    import json

    from keras_lc.cli import main

    path = tmp_path / "m.keras"
    small_model.save(path)
    out = tmp_path / "eval.json"
    main(["evaluate", str(path), "--num-images", "4", "--image-size", "32", "--num-classes", "4",
          "--scales", "0.5", "1", "--flip", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["scales"] == [0.5, 1.0] and result["flip"] and len(result["stage_share_per_scale"]) == 2
    main(["bench", str(path), "--height", "32", "--width", "32", "--scales", "0.5", "1", "--repeats", "1"])
    assert "scales [0.5, 1.0]" in capsys.readouterr().out
    # predict at a larger input: the panels are predict_multiscale's labels and stage map, at the image's size
    from keras_lc.viz import stage_panel

    image = tf.cast(tf.random.stateless_uniform((30, 38, 3), (1, 2), 0, 256), tf.uint8).numpy()
    tf.io.write_file(str(tmp_path / "frame.png"), tf.io.encode_png(image))
    for flags, folder in (([], "plain"), (["--scales", "1.5"], "scaled")):
        main(["predict", str(path), str(tmp_path / "frame.png"), "--out", str(tmp_path / folder), *flags])
    panels = {f: tf.io.decode_png(tf.io.read_file(str(tmp_path / f / "frame.png"))).numpy()
              for f in ("plain", "scaled")}
    ref = small_model.predict_multiscale(image[None], scales=(1.5,))
    want = stage_panel(image, ref["labels"][0].numpy(), ref["stage"][0].numpy(), small_model.num_classes)
    np.testing.assert_array_equal(panels["scaled"], want)
    assert panels["scaled"].shape == panels["plain"].shape and panels["plain"].shape[0] == 30
    assert not np.array_equal(panels["scaled"], panels["plain"])
    for command in ("predict", "evaluate", "bench"):  # a mirror asked for without scales is refused, not ignored
        with pytest.raises(SystemExit, match="--flip goes with --scales"):
            main([command, str(path), "--flip"])
    with pytest.raises(SystemExit, match="serving_multiscale"):
        main(["predict", "--server", "grpc://127.0.0.1:1", str(tmp_path / "frame.png"), "--scales", "1.5"])
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(SystemExit):
            main(["evaluate", str(path), "--scales", bad])
    assert "a scale must be a positive number" in capsys.readouterr().err
