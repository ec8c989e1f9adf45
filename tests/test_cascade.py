import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

import keras_lc
from keras_lc import build_model
from keras_lc.data import synthetic_arrays


def _partial_rho(model, images):
    """A ρ that sends part, not all, of the pixels to stages 2 and 3 (untrained model)."""
    p1 = model(images, rho=1.0)["stage1"].numpy().max(-1)
    return float(np.quantile(p1, 0.6))


def test_outputs_contract(small_model, images):
    out = small_model(images)
    assert set(out) == {"labels", "probs", "stage", "stage1", "stage2", "stage3"}
    assert out["labels"].shape == (2, 32, 40) and out["labels"].dtype == tf.int32
    assert out["probs"].shape == (2, 32, 40, 4) and out["probs"].dtype == tf.float32
    assert out["stage"].shape == (2, 32, 40) and out["stage"].dtype == tf.uint8
    for k in (1, 2, 3):
        assert out[f"stage{k}"].shape == (2, 8, 10, 4)
    np.testing.assert_array_equal(out["labels"], np.argmax(out["probs"], -1))
    assert set(np.unique(out["stage"])) <= {1, 2, 3}


def test_rho_one_is_dsn(small_model, images):
    out = small_model(images, rho=1.0)
    assert np.all(out["stage"].numpy() == 3)
    up = tf.image.resize(out["stage3"], (32, 40), method="bilinear")
    np.testing.assert_array_equal(out["labels"], np.argmax(up, -1))
    # the stages computed everywhere
    assert np.all(np.isclose(out["stage2"].numpy().sum(-1), 1.0, atol=1e-5))


def test_tiny_rho_decides_everything_at_stage_one(small_model, images):
    out = small_model(images, rho=1e-6)
    assert np.all(out["stage"].numpy() == 1)
    assert not out["stage2"].numpy().any() and not out["stage3"].numpy().any()
    up = tf.image.resize(out["stage1"], (32, 40), method="bilinear")
    np.testing.assert_array_equal(out["labels"], np.argmax(up, -1))


def test_cascade_equals_dense_reference(small_model, images):
    rho = _partial_rho(small_model, images)
    sparse = small_model(images, rho=rho)
    stage = sparse["stage"].numpy()
    assert len(np.unique(stage)) == 3, "test needs pixels at every stage"
    small_model.dense = True
    try:
        dense = small_model(images, rho=rho)
    finally:
        small_model.dense = False
    for key in ("probs", "stage1", "stage2", "stage3"):
        np.testing.assert_allclose(sparse[key], dense[key], atol=1e-5)
    np.testing.assert_array_equal(sparse["stage"], dense["stage"])


def test_auto_dense_fallback_gives_same_outputs(small_model, images):
    rho = _partial_rho(small_model, images)
    ref = small_model(images, rho=rho)
    clone = build_model("tiny", num_classes=4, rho=rho, ignore_class=4, dense_threshold=0.01, **SMALL)
    clone.set_weights(small_model.get_weights())
    out = clone(images)
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)


def test_stage_map_matches_regions(small_model, images):
    rho = _partial_rho(small_model, images)
    out = small_model.forward_details(images, rho=rho)
    r2, r3 = out["regions"][1].numpy(), out["regions"][2].numpy()
    assert np.all(r3 <= r2)
    p1 = out["probs_per_stage"][0].numpy().max(-1)
    np.testing.assert_array_equal(r2, p1 < rho)


def test_rho_settable_without_rebuild(small_model, images):
    old = small_model.rho
    try:
        small_model.rho = 1.0
        a = small_model.predict(images, verbose=0)["stage"]
        small_model.rho = 1e-6
        b = small_model.predict(images, verbose=0)["stage"]
        assert np.all(a == 3) and np.all(b == 1)
    finally:
        small_model.rho = old


def test_cascade_gradients_zero_outside_region(small_model, images):
    rho = _partial_rho(small_model, images)
    labels = np.random.default_rng(1).integers(0, 5, size=(2, 32, 40))
    with tf.GradientTape() as tape:
        out = small_model.forward_details(images, rho=rho, training=True)
        loss = tf.add_n(small_model.stage_losses(out, labels))
    g2, g3 = tape.gradient(loss, [out["logits"][1], out["logits"][2]])
    for g, region in ((g2, out["regions"][1]), (g3, out["regions"][2])):
        g, region = g.numpy(), region.numpy()
        assert 0 < region.mean() < 1
        assert not g[~region].any()
        assert np.abs(g[region]).sum() > 0


def test_sparse_and_dense_training_gradients_agree(small_model, images):
    rho = _partial_rho(small_model, images)
    labels = np.random.default_rng(2).integers(0, 5, size=(2, 32, 40))

    def grads(dense):
        with tf.GradientTape() as tape:
            out = small_model.forward_details(images, rho=rho, training=False, dense=dense)
            loss = tf.add_n(small_model.stage_losses(out, labels))
        return tape.gradient(loss, small_model.trainable_variables)

    for a, b in zip(grads(False), grads(True)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("mode", ["initial", "cascade"])
def test_fit_lowers_loss(mode):
    keras.utils.set_random_seed(1)
    images, labels = synthetic_arrays(16, 48, 48, num_classes=4, seed=3)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, training_mode=mode, **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    before = model.evaluate(ds, verbose=0, return_dict=True)
    history = model.fit(ds, epochs=8, verbose=0, shuffle=False).history
    assert history["loss"][-1] < history["loss"][0]
    # the total is the sum of the stage losses (loss weights 1, 1, 1)
    parts = sum(history[f"stage{k}_loss"][-1] for k in (1, 2, 3))
    assert history["loss"][-1] == pytest.approx(parts, rel=1e-5)
    after = model.evaluate(ds, verbose=0, return_dict=True)
    assert after["stage1_loss"] < before["stage1_loss"]
    shares = [history[f"stage{k}_share"][-1] for k in (1, 2, 3)]
    assert abs(sum(shares) - 1.0) < 1e-4
    if mode == "initial":
        assert shares[2] == pytest.approx(1.0)


def test_ignore_label_does_not_count(small_model, images):
    labels = np.full((2, 32, 40), 4)
    labels[:, :4, :4] = 1
    out = small_model.forward_details(images, rho=1.0)
    a = small_model.stage_losses(out, labels)
    labels2 = labels.copy()
    labels2[:, 10:, 10:] = 4  # already ignore; change nothing else
    b = small_model.stage_losses(out, labels2)
    np.testing.assert_allclose([float(v) for v in a], [float(v) for v in b])
    all_void = small_model.stage_losses(out, np.full((2, 32, 40), 4))
    assert all(float(v) == 0.0 for v in all_void)


def test_save_load_round_trip(small_model, images, tmp_path):
    path = tmp_path / "m.keras"
    small_model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_lc.LayerCascade)
    assert loaded.rho == small_model.rho and loaded.ignore_class == 4
    a, b = small_model(images), loaded(images)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_any_input_size(small_model):
    out = small_model(np.zeros((1, 37, 23, 3), np.uint8))
    assert out["labels"].shape == (1, 37, 23)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("rho", [0.0, -0.5, 1.01, float("nan"), "high"])
def test_bad_rho(small_model, images, rho):
    with pytest.raises(ValueError, match="rho"):
        build_model("tiny", num_classes=3, rho=rho, **SMALL)
    with pytest.raises(ValueError, match="rho"):
        small_model.rho = rho
    if not isinstance(rho, str):
        with pytest.raises(ValueError, match="rho"):
            small_model(images, rho=rho)


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((32, 32, 3), np.uint8, "4D"), ((1, 32, 32, 4), np.uint8, "3 channels"),
     ((1, 32, 32, 1), np.float32, "3 channels"),
     ((1, 0, 32, 3), np.uint8, "non-zero"), ((1, 8, 8, 3), bool, "dtype")],
)
def test_bad_images(small_model, shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        small_model(np.zeros(shape, dtype))


def test_labels_out_of_range_in_fit(small_model, images):
    small_model.compile(optimizer="adam")
    bad = np.zeros((2, 32, 40), np.int32)
    bad[0, 0, 0] = 17
    with pytest.raises(ValueError, match="labels out of range.*17"):
        small_model.fit(images, bad, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labels out of range"):
        small_model.evaluate(images, bad - 3, verbose=0)
    with pytest.raises(ValueError, match="do not match"):
        small_model.fit(images, np.zeros((2, 16, 40), np.int32), epochs=1, verbose=0)


def test_bad_construction():
    with pytest.raises(ValueError, match="Unknown backbone"):
        build_model("vgg", num_classes=3)
    with pytest.raises(ValueError, match="ignore_class"):
        build_model("tiny", num_classes=3, ignore_class=1, **SMALL)
    with pytest.raises(ValueError, match="training_mode"):
        build_model("tiny", num_classes=3, training_mode="warm", **SMALL)
    with pytest.raises(ValueError, match="Bad argument"):
        build_model("tiny", num_classes=3, depth=7)


def test_class_weights_weight_the_loss(small_model, images):
    from keras_lc.losses import masked_sparse_categorical_crossentropy

    labels = np.random.default_rng(3).integers(0, 5, size=(2, 8, 10))
    logits = tf.random.stateless_normal([2, 8, 10, 4], seed=[1, 2])
    w = [0.5, 2.0, 1.0, 3.0]
    got = float(masked_sparse_categorical_crossentropy(labels, logits, ignore_class=4, class_weights=w))
    valid = labels != 4
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(np.where(valid, labels, 0), logits).numpy()
    pix_w = np.where(valid, np.array(w + [0.0])[labels], 0.0)
    assert got == pytest.approx(float((ce * pix_w).sum() / pix_w.sum()), rel=1e-5)
    model = build_model("tiny", num_classes=4, ignore_class=4, class_weights=w, **SMALL)
    assert LayerCascadeFromConfig(model).class_weights == w
    with pytest.raises(ValueError, match="class_weights"):
        build_model("tiny", num_classes=4, class_weights=[1.0, 2.0], **SMALL)


def LayerCascadeFromConfig(model):
    return keras_lc.LayerCascade.from_config(model.get_config())


@pytest.mark.parametrize("values, dtype, message", [
    (np.nan, np.float32, "finite values in 0..255.*NaN"), (np.inf, np.float32, "NaN or inf"),
    (300.0, np.float32, "values from 0 to 300"), (-1.0, np.float64, "values from -1"),
    (7, np.uint16, "dtype uint16"), (7, np.int32, "dtype int32"),
])
def test_images_outside_the_contract_are_refused(small_model, values, dtype, message):
    x = np.zeros((1, 16, 16, 3), dtype)
    x[0, :2, :2] = values
    with pytest.raises(ValueError, match=message):
        small_model(x)


def test_non_finite_images_stop_fit_and_graph_calls():
    from conftest import SMALL

    from keras_lc import build_model

    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    model.compile(optimizer="adam")
    x = np.full((2, 16, 16, 3), 100.0, np.float32)
    x[0, 3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="images must be finite values in 0..255"):
        model.fit(x, np.zeros((2, 16, 16), np.int32), epochs=1, verbose=0)
    graph = tf.function(lambda images, rho: model(images, rho=rho)["labels"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="images must be finite"):
        graph(tf.constant(x), tf.constant(0.9))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rho must be in"):
        graph(tf.constant(x[1:]), tf.constant(float("nan")))


@pytest.mark.parametrize("rho", [0.0, float("nan"), -1.0, 2.0])
def test_rho_tensors_are_validated_like_python_rho(small_model, images, rho):
    with pytest.raises(ValueError, match="rho"):
        small_model(images, rho=tf.constant(rho))


def test_string_rho_is_a_clear_error(small_model, images):
    for rho in ("0.5", tf.constant("0.5")):
        with pytest.raises(ValueError, match="rho must be a number"):
            small_model(images, rho=rho)


def test_loss_at_input_resolution_counts_thin_structures():
    """loss_resolution="input": each stage's logits resized bilinearly to the labels, its region nearest;
    a one-pixel-wide class that the stage-grid labels lose entirely still counts."""
    tf.keras.utils.set_random_seed(1)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None,
                        loss_resolution="input", **SMALL)
    images = np.random.default_rng(1).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
    out = model.forward_details(images, rho=1.0)
    labels = np.full((2, 32, 40), 4)
    labels[:, :, 1] = 2  # one column of class 2: never a stage-grid pixel centre (output stride 4)
    h, w = out["logits"][0].shape[1:3]
    for k, loss in enumerate(model.stage_losses(out, labels)):
        up = tf.image.resize(out["logits"][k], (32, 40), method="bilinear").numpy()
        ce = -tf.nn.log_softmax(up).numpy()[:, :, 1, 2]
        np.testing.assert_allclose(float(loss), ce.mean(), rtol=1e-5)
    stage = keras_lc.LayerCascade.from_config({**model.get_config(), "loss_resolution": "stage"})
    assert all(float(v) == 0.0 for v in stage.stage_losses(out, labels))  # the column is lost at the stage grid
    assert (h, w) == (8, 10)
    # Cascade regions: a stage's loss counts only the input pixels whose stage-grid pixel is in its region.
    region = np.zeros((2, h, w), bool)
    region[:, :, :1] = True  # the first stage-grid column = input columns 0..3
    cut = {**out, "regions": [tf.constant(region)] * 3}
    labels2 = np.full((2, 32, 40), 1)
    a = model.stage_losses(cut, labels2)
    up = tf.image.resize(out["logits"][1], (32, 40), method="bilinear")
    ce = -tf.nn.log_softmax(up).numpy()[..., 1]
    np.testing.assert_allclose(float(a[1]), ce[:, :, :4].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="loss_resolution"):
        build_model("tiny", num_classes=4, loss_resolution="full", **SMALL)


def test_compute_paths_of_steps_and_rho_tensors(images):
    """The cascade train step fixes the region path (no data-dependent switch under the gradient tape: a
    TensorFlow executor error with ASPP heads at full size); the initial step and a ρ tensor ≥ 1 run the plain
    dense graph whole (every pixel is forwarded: nothing to mask)."""
    tf.keras.utils.set_random_seed(1)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=0.5, **SMALL)
    seen = []
    run_stage = model.run_stage

    def spy(k, *args, **kwargs):
        seen.append((k, kwargs.get("path", "auto")))
        return run_stage(k, *args, **kwargs)

    model.run_stage = spy
    labels = np.zeros(images.shape[:3], np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.train_step((tf.constant(images), tf.constant(labels)))
    assert {p for k, p in seen if k > 1} == {"region"}
    model.training_mode = "initial"
    seen.clear()
    model.train_step((tf.constant(images), tf.constant(labels)))
    assert {p for k, p in seen if k > 1} == {"full"}
    seen.clear()
    out = model.forward_details(images, rho=tf.constant(1.0))  # eager: the branch ρ picks runs
    assert {p for k, p in seen if k > 1} == {"full"}
    np.testing.assert_allclose(out["probs"], model.forward_details(images, rho=1.0)["probs"], atol=1e-6)
    masked = model.forward_details(images, rho=1.0, path="dense")  # the masked dense path: the same numbers
    np.testing.assert_allclose(out["probs"], masked["probs"], atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs a region covering every pixel"):
        s1 = model.run_stage(1, model.preprocess(images))
        model.run_stage(2, s1["features"], tf.zeros(tf.shape(s1["next_region"]), tf.bool), path="full")
    seen.clear()
    low = model.forward_details(images, rho=tf.constant(0.7))
    assert {p for k, p in seen if k > 1} == {"auto"}
    np.testing.assert_allclose(low["probs"], model.forward_details(images, rho=0.7)["probs"], atol=1e-6)
    with pytest.raises(ValueError, match="path must be"):
        model.forward_details(images, path="auto")


def _all_op_types(library, function_def):
    types = [n.op for n in function_def.node_def]
    for n in function_def.node_def:
        if n.op in ("If", "StatelessIf"):
            types.extend(_all_op_types(library, library[n.attr["then_branch"].func.name]))
    return types


def _fanin_op_types(library, function_def, output_index):
    """Op types in the fan-in (data and control inputs) of a FunctionDef's output `output_index`; a nested
    conditional contributes the ops of its then-branch (the per-stage switches: one head either way)."""
    nodes = {n.name: n for n in function_def.node_def}
    ret = function_def.ret[function_def.signature.output_arg[output_index].name]
    todo, seen, types = [ret], set(), []
    while todo:
        name = todo.pop().lstrip("^").split(":")[0]
        if name in seen or name not in nodes:  # a function argument
            continue
        seen.add(name)
        node = nodes[name]
        types.append(node.op)
        if node.op in ("If", "StatelessIf"):
            types.extend(_all_op_types(library, library[node.attr["then_branch"].func.name]))
        todo.extend(node.input)
    return types


def test_rho_tensor_at_one_needs_only_the_last_head(images):
    """With ρ a tensor (the serving signatures), the ρ ≥ 1 branch's labels read stage 3's head alone, so a
    labels-only graph prunes heads 1–2 as the dense network (Python ρ = 1) does; the ρ < 1 branch reads all
    three. The outputs of both branches equal the Python-ρ graph's."""
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=0.5, **SMALL)
    fn = tf.function(lambda x, r: model.forward_details(x, rho=r)["labels"])
    graph_def = fn.get_concrete_function(tf.constant(images), tf.constant(1.0)).graph.as_graph_def()
    conds = [n for n in graph_def.node if n.op in ("If", "StatelessIf")]
    cond = max(conds, key=lambda n: len(n.attr["Tout"].list.type))  # the ρ ≥ 1 switch returns the whole dict
    library = {f.signature.name: f for f in graph_def.library.function}
    softmaxes = {branch: _fanin_op_types(library, library[cond.attr[branch].func.name], 0).count("Softmax")
                 for branch in ("then_branch", "else_branch")}
    assert softmaxes == {"then_branch": 1, "else_branch": 3}  # output 0: "labels" (flattened dicts sort their keys)
    for r in (1.0, 0.7):
        a, b = model.forward_details(images, rho=tf.constant(r)), model.forward_details(images, rho=r)
        for key in ("labels", "stage"):
            np.testing.assert_array_equal(a[key], b[key])
        for k in range(3):
            np.testing.assert_allclose(a["probs_per_stage"][k], b["probs_per_stage"][k], atol=1e-6)
            np.testing.assert_array_equal(a["regions"][k], b["regions"][k])
