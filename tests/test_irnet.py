import keras
import numpy as np
import pytest

from keras_lc import build_model
from keras_lc.models.weights import load_imagenet_weights


@pytest.fixture(scope="module")
def small_irnet():
    keras.utils.set_random_seed(0)
    return build_model("irnet", num_classes=5, rho=0.9, block_counts=(1, 2, 2), head_channels=32, dense_threshold=None)


def test_small_irnet_shapes_and_names(small_irnet):
    out = small_irnet(np.zeros((1, 64, 64, 3), np.uint8))
    assert out["labels"].shape == (1, 64, 64)
    for k in (1, 2, 3):
        assert out[f"stage{k}"].shape == (1, 8, 8, 5)  # output stride 8
    names = {layer.name for stage in small_irnet.stages for layer in stage._flatten_layers()}
    for name in ("block35_1", "mixed_6a", "block17_2", "mixed_7a", "block8_2", "conv_7b", "conv_7b_bn",
                 "block17_1_conv", "block8_2_conv"):
        assert name in names, name


def test_irnet_cascade_equals_dense_reference(small_irnet):
    x = np.random.default_rng(1).integers(0, 256, (2, 64, 48, 3)).astype(np.uint8)
    p1 = small_irnet(x, rho=1.0)["stage1"].numpy().max(-1)
    rho = float(np.quantile(p1, 0.5))
    sparse = small_irnet(x, rho=rho)
    assert len(np.unique(sparse["stage"])) >= 2
    small_irnet.dense = True
    try:
        dense = small_irnet(x, rho=rho)
    finally:
        small_irnet.dense = False
    for key in ("probs", "stage1", "stage2", "stage3"):
        np.testing.assert_allclose(sparse[key], dense[key], atol=1e-4)
    # rho = 1: the region path over every pixel equals the dense network
    small_irnet.dense = True
    try:
        d1 = small_irnet(x, rho=1.0)
    finally:
        small_irnet.dense = False
    np.testing.assert_allclose(small_irnet(x, rho=1.0)["probs"], d1["probs"], atol=1e-4)


def test_batchnorm_is_frozen(small_irnet):
    bns = [layer for stage in small_irnet.stages for layer in stage._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    assert not any("moving" in v.path or "beta" in v.path for v in small_irnet.trainable_variables
                   if "_bn" in v.path)


def test_load_keras_applications_weights(tmp_path):
    app = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    app.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) + (1.0 if "variance" in v.path else 0.0)
                     for w, v in zip(app.get_weights(), app.weights)])
    path = tmp_path / "irv2.weights.h5"
    app.save_weights(path)
    model = build_model("irnet", num_classes=21, block_counts=(10, 20, 10))
    report = load_imagenet_weights(model, path)
    assert report["missing"] == [] and report["extra"] == []
    keras_by_name = {layer.name: layer for layer in app.layers}
    for stage in model.stages:
        segments, named = stage.segments()
        for name, layer in named.items():
            for a, b in zip(layer.get_weights(), keras_by_name[name].get_weights()):
                np.testing.assert_array_equal(a, b)
    # every copied conv and BN tensor equals its Keras source (block by block, position by position)
    from keras_lc.models.weights import _keras_segments

    keras_segments, _ = _keras_segments(app)
    checked = 0
    for stage in model.stages:
        for name, pairs in stage.segments()[0]:
            for (conv, bn), (kconv, kbn) in zip(pairs, keras_segments[name], strict=True):
                for a, b in zip(conv.get_weights() + bn.get_weights(), kconv.get_weights() + kbn.get_weights()):
                    np.testing.assert_array_equal(a, b)
                    checked += 1
    assert checked == sum(len(p) for p in keras_segments.values()) * 4  # kernel + beta, mean, variance
    # the unnamed convs: every Keras conv kernel appears exactly once among IRNet-LC's
    ours = sorted(float(np.sum(c.kernel.numpy() ** 2)) for s in model.stages for _, p in s.segments()[0] for c, _ in p)
    theirs = sorted(float(np.sum(layer.kernel.numpy() ** 2)) for layer in app.layers
                    if isinstance(layer, keras.layers.Conv2D) and not layer.use_bias and layer.name != "conv_7b")
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert len(report["copied"]) == 448

    small = build_model("irnet", num_classes=21)  # the paper's (5, 10, 5): Keras' extra blocks are listed
    with pytest.raises(ValueError, match="200 unused Keras layers"):
        load_imagenet_weights(small, path)
    with pytest.warns(UserWarning, match="Keras layers unused"):
        report = load_imagenet_weights(small, path, strict=False)
    assert len(report["extra"]) == 200 and report["missing"] == []


def test_bad_weights_files(tmp_path, small_irnet):
    with pytest.raises(ValueError, match="not found"):
        load_imagenet_weights(small_irnet, tmp_path / "none.h5")
    other = build_model("tiny", num_classes=3, width=8, stem_channels=8, bottleneck_channels=8, head_channels=8)
    other.save_weights(tmp_path / "tiny.weights.h5")
    with pytest.raises(ValueError, match="does not hold InceptionResNetV2"):
        load_imagenet_weights(small_irnet, tmp_path / "tiny.weights.h5")
    with pytest.raises(ValueError, match="IRNet-LC or ResNet-LC model"):
        load_imagenet_weights(other, tmp_path / "tiny.weights.h5")
    with pytest.raises(ValueError, match="block_counts"):
        build_model("irnet", num_classes=3, block_counts=(1, 2))


@pytest.mark.slow  # a full-size network (the small IRNet tests above check the same equality)
def test_full_irnet_512():
    model = build_model("irnet", num_classes=21, rho=1.0)
    x = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3)).astype(np.uint8)
    out = model(x)
    for k in (1, 2, 3):
        assert out[f"stage{k}"].shape == (1, 64, 64, 21)
    model.dense = True
    dense = model(x)
    np.testing.assert_allclose(out["probs"], dense["probs"], atol=1e-4)


# ------------------------------------------------------------------------------ ResNet-LC
@pytest.fixture(scope="module")
def resnet50():
    keras.utils.set_random_seed(0)
    return build_model("resnet50", num_classes=5, rho=0.9, head_channels=32, dense_threshold=None)


def test_resnet_shapes_and_cascade_equals_dense(resnet50):
    x = np.random.default_rng(2).integers(0, 256, (2, 64, 48, 3)).astype(np.uint8)
    out = resnet50(x, rho=1.0)
    for k in (1, 2, 3):
        assert out[f"stage{k}"].shape == (2, 8, 6, 5)
    rho = float(np.quantile(out["stage1"].numpy().max(-1), 0.5))
    sparse = resnet50(x, rho=rho)
    assert len(np.unique(sparse["stage"])) >= 2
    resnet50.dense = True
    try:
        dense, dense1 = resnet50(x, rho=rho), resnet50(x, rho=1.0)
    finally:
        resnet50.dense = False
    np.testing.assert_allclose(sparse["probs"], dense["probs"], atol=1e-4)
    np.testing.assert_allclose(out["probs"], dense1["probs"], atol=1e-4)


def test_resnet_loads_keras_weights_by_name(resnet50, tmp_path):
    app = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "r50.weights.h5"
    app.save_weights(path)
    report = load_imagenet_weights(resnet50, path)
    assert report["missing"] == [] and report["extra"] == [] and len(report["copied"]) == 106
    ours = {n: layer for s in resnet50.stages for n, layer in s.named_layers().items()}
    for name in ("conv1_conv", "conv3_block1_0_conv", "conv4_block6_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(ours[name].get_weights(), app.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not hold resnet50"):
        other = tmp_path / "irnet.weights.h5"
        build_model("irnet", num_classes=3, block_counts=(1, 1, 1), head_channels=8).save_weights(other)
        load_imagenet_weights(resnet50, other)


def test_resnet101_builds_small():
    model = build_model("resnet101", num_classes=3, head_channels=8)
    assert model(np.zeros((1, 32, 32, 3), np.uint8))["stage3"].shape == (1, 4, 4, 3)
    assert sum(len(b) for _, b in model.stages[1].groups) == 23


@pytest.mark.slow  # full-size networks (test_resnet_shapes_and_cascade_equals_dense checks the same at 64×48)
@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_full_resnet_512(backbone):
    model = build_model(backbone, num_classes=21, rho=1.0)
    x = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3)).astype(np.uint8)
    out = model(x)
    assert out["stage3"].shape == (1, 64, 64, 21)
    model.dense = True
    np.testing.assert_allclose(out["probs"], model(x)["probs"], atol=1e-4)
