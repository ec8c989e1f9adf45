import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL

from keras_lc import build_model
from keras_lc.data import synthetic_arrays
from keras_lc.export import SIGNATURES, export_onnx, export_savedmodel


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(3)
    m = build_model("tiny", num_classes=4, rho=0.6, ignore_class=4, **SMALL)
    # a quick fit so that the stages really split the pixels
    images, labels = synthetic_arrays(16, 32, 32, num_classes=4, seed=1)
    m.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
    m.fit(images, labels, batch_size=8, epochs=6, verbose=0)
    return m


@pytest.fixture(scope="module")
def inputs():
    random = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 3)).astype(np.uint8)
    scenes, _ = synthetic_arrays(2, 32, 40, num_classes=4, seed=9)
    return {"random": random, "scenes": scenes}


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return export_savedmodel(model, tmp_path_factory.mktemp("sm"), "lc", 1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_savedmodel_layout_and_same_labels(model, saved, inputs):
    assert saved.name == "1" and saved.parent.name == "lc" and (saved / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(saved))
    assert set(loaded.signatures) == set(SIGNATURES)
    for x in inputs.values():
        ref = model(x)
        out = loaded.signatures["serving_default"](images=tf.constant(x))
        assert set(out) == {"labels", "stage"}
        assert out["labels"].dtype == tf.int32 and out["stage"].dtype == tf.uint8
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        np.testing.assert_array_equal(out["stage"], ref["stage"])
        for rho in (1.0, 0.3):
            out = loaded.signatures["serving_rho"](images=tf.constant(x), rho=tf.constant(rho))
            np.testing.assert_array_equal(out["labels"], model(x, rho=rho)["labels"])
        png = [tf.io.encode_png(im).numpy() for im in x]
        out = loaded.signatures["serving_image_bytes"](image_bytes=tf.constant(png))
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        out = loaded.signatures["serving_image_bytes_rho"](image_bytes=tf.constant(png), rho=tf.constant(1.0))
        assert np.all(out["stage"].numpy() == 3)


def test_savedmodel_rejects_bad_requests(saved):
    loaded = tf.saved_model.load(str(saved))
    x = tf.zeros([1, 16, 16, 3], tf.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rho must be in"):
        loaded.signatures["serving_rho"](images=x, rho=tf.constant(1.5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-zero height"):
        loaded.signatures["serving_default"](images=tf.zeros([1, 0, 16, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        loaded.signatures["serving_image_bytes"](image_bytes=tf.constant([b"not an image"]))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        loaded.signatures["serving_default"](images=tf.zeros([1, 16, 16, 3], tf.float32))


def test_probs_only_when_asked(model, tmp_path, inputs):
    path = export_savedmodel(model, tmp_path, "lcp", 2, include_probs=True)
    out = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(inputs["random"]))
    assert out["probs"].shape == (2, 32, 40, 4)
    with pytest.raises(ValueError, match="version"):
        export_savedmodel(model, tmp_path, "lcp", 0)


def test_multiscale_signature_is_predict_multiscale(model, tmp_path, inputs, capsys):
    from keras_lc import cli

    # one export, through the CLI (the .keras round trip, the flags, the listing) and compared with the library
    model_file = tmp_path / "m.keras"
    model.save(model_file)
    cli.main(["export", str(model_file), "--out", str(tmp_path), "--name", "ms", "--probs",
              "--scales", "1", "0.5", "--flip", "--fusion", "max"])
    assert "serving_multiscale" in capsys.readouterr().out
    path = tmp_path / "ms" / "1"
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {*SIGNATURES, "serving_multiscale"}
    x = inputs["scenes"]
    for rho in (1.0, 0.6):
        out = loaded.signatures["serving_multiscale"](images=tf.constant(x), rho=tf.constant(rho))
        ref = model.predict_multiscale(x, scales=(1.0, 0.5), flip=True, rho=rho, fusion="max")
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        np.testing.assert_array_equal(out["stage"], ref["stage"])
        np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    assert json.loads((path / "keras_lc.json").read_text())["multiscale"] == {"scales": [1.0, 0.5], "flip": True,
                                                                              "fusion": "max"}
    with pytest.raises(ValueError, match="scales"):
        export_savedmodel(model, tmp_path, "ms", 2, scales=())
    assert not (tmp_path / "ms" / "2").exists()
    with pytest.raises(SystemExit, match="do not go with"):
        cli.main(["export", str(model_file), "--out", str(tmp_path), "--format", "onnx", "--scales", "1"])


def test_onnx_matches_tensorflow(model, tmp_path, inputs):
    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "m.onnx", include_probs=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert model.pad_to and 30 % model.pad_to and 38 % model.pad_to  # padded inside the graph, then cropped back
    odd = np.random.default_rng(4).integers(0, 256, (1, 30, 38, 3)).astype(np.uint8)
    for x in (*inputs.values(), odd):
        for rho in (0.6, 1.0, 0.3):
            got = dict(zip(names, session.run(None, {"images": x, "rho": np.array(rho, np.float32)})))
            ref = model(x, rho=rho)
            np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
            np.testing.assert_array_equal(got["stage"], ref["stage"])
            np.testing.assert_array_equal(got["labels"], ref["labels"])


def test_tfserving_client_against_in_process_servicer(model, saved, inputs):
    from tfserving_fixture import start_server

    from keras_lc.serving import TFServingClient

    server, port = start_server(saved, "lc")
    try:
        client = TFServingClient(f"grpc://127.0.0.1:{port}", "lc")
        meta = client.metadata()
        assert meta.model_spec.name == "lc" and "signature_def" in meta.metadata
        x = inputs["scenes"]
        out = client.predict(x)
        np.testing.assert_array_equal(out["labels"], model(x)["labels"])
        out = client.predict(x, rho=1.0)
        assert np.all(out["stage"] == 3)
        png = [tf.io.encode_png(im).numpy() for im in x]
        np.testing.assert_array_equal(client.predict(image_bytes=png)["labels"], model(x)["labels"])
        import grpc

        with pytest.raises(grpc.RpcError, match="rho must be in"):
            client.predict(x, rho=2.0)
        np.testing.assert_array_equal(client.predict(x)["labels"], model(x)["labels"])  # still serving
        client.close()
    finally:
        server.stop(0)


# --------------------------------------------------------------------------------- Triton
@pytest.fixture(scope="module")
def triton(model, tmp_path_factory):
    pytest.importorskip("pytriton", reason="the [serve] extra is not installed")
    from keras_lc.serving import TritonServer, write_triton_repository

    repo = tmp_path_factory.mktemp("repo")
    write_triton_repository(model, repo, "lc", 1)
    write_triton_repository(model, repo, "lc_onnx", 1, fmt="onnx")
    write_triton_repository(model, repo, "lc_cap", 1, max_pixels=2 * 32 * 32, instances=2)
    server = TritonServer(repo, http_port=_free_port(), grpc_port=_free_port(), log_file=str(repo / "server.log"))
    server.start(timeout_s=180)
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name", ["lc", "lc_onnx"])
def test_triton_end_to_end(triton, model, inputs, protocol, name):
    from keras_lc.serving import TritonClient

    port = triton.grpc_port if protocol == "grpc" else triton.http_port
    client = TritonClient(f"{protocol}://127.0.0.1:{port}", name, protocol=protocol)
    assert client.ready()
    for x in inputs.values():
        out = client.predict(x)
        np.testing.assert_array_equal(out["labels"], model(x)["labels"])
        np.testing.assert_array_equal(out["stage"], model(x)["stage"])
    x = inputs["scenes"]
    assert np.all(client.predict(x, rho=1.0)["stage"] == 3)
    np.testing.assert_array_equal(client.predict(x, rho=0.3)["labels"], model(x, rho=0.3)["labels"])
    png = [tf.io.encode_png(im).numpy() for im in x]
    np.testing.assert_array_equal(client.predict(image_bytes=png)["labels"], model(x)["labels"])


def test_triton_bad_requests_get_errors_and_server_keeps_serving(triton, model, inputs):
    from tritonclient.utils import InferenceServerException

    from keras_lc.serving import TritonClient

    client = TritonClient(f"127.0.0.1:{triton.grpc_port}", "lc", protocol="grpc")
    x = inputs["scenes"]
    bad = [
        (dict(images=x.astype(np.float32)), "(?i)data type|datatype|FP32|unexpected"),
        (dict(images=np.ascontiguousarray(x[..., :2])), "(?i)shape|dims"),
        (dict(images=np.zeros((1, 0, 8, 3), np.uint8)), "(?i)empty|zero|shape"),
        (dict(image_bytes=[b"garbage"]), "not a PNG/JPEG"),
        (dict(images=x, rho=1.5), "rho must be in"),
        (dict(images=x, rho=0.0), "rho must be in"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InferenceServerException, match=message) as e:
            client.predict(**kwargs)
        if "rho" in kwargs or "image_bytes" in kwargs:  # the backend's checks: the client's fault
            assert "INVALID_ARG" in str(e.value.status()), e.value.status()
        np.testing.assert_array_equal(client.predict(x)["labels"], model(x)["labels"])  # still serving
    with pytest.raises(ValueError, match=r"rank 4\); got shape \(\d+, \d+, 3\)"):
        client.predict(x[0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_pixel_cap_refuses_big_requests_with_invalid_arg(triton, model, protocol):
    from tritonclient.utils import InferenceServerException

    from keras_lc.serving import TritonClient

    port = triton.grpc_port if protocol == "grpc" else triton.http_port
    client = TritonClient(f"127.0.0.1:{port}", "lc_cap", protocol=protocol)
    small = np.zeros((2, 32, 32, 3), np.uint8)  # exactly the cap
    np.testing.assert_array_equal(client.predict(small)["labels"], model(small)["labels"])
    big = np.zeros((1, 40, 60, 3), np.uint8)
    png = [tf.io.encode_png(big[0]).numpy()]
    for kwargs in (dict(images=big), dict(image_bytes=png)):
        with pytest.raises(InferenceServerException, match="2,400 pixels .* at most 2,048 per request") as e:
            client.predict(**kwargs)
        assert str(e.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), e.value.status()
    config = (triton.repository / "lc_cap" / "config.pbtxt").read_text()
    assert "count: 2" in config


def test_cli_export_and_serve_stop_cleanly(model, tmp_path, inputs):
    pytest.importorskip("pytriton", reason="the [serve] extra is not installed")
    from keras_lc.cli import main
    from keras_lc.serving import TritonClient

    model.save(tmp_path / "m.keras")
    main(["export", str(tmp_path / "m.keras"), "--name", "lc", "--out", str(tmp_path / "sm")])
    assert (tmp_path / "sm" / "lc" / "1" / "saved_model.pb").is_file()
    main(["export", str(tmp_path / "m.keras"), "--format", "onnx", "--out", str(tmp_path / "sm")])
    assert (tmp_path / "sm" / "lc" / "1" / "model.onnx").is_file()
    main(["export", str(tmp_path / "m.keras"), "--triton", "--out", str(tmp_path / "repo")])
    assert (tmp_path / "repo" / "lc" / "config.pbtxt").is_file()
    http, grpc_port = _free_port(), _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "keras_lc.cli", "serve",
                             "--model-repository", str(tmp_path / "repo"),
                             "--http-port", str(http), "--grpc-port", str(grpc_port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        line = ""
        while time.time() < deadline and "is serving" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "serve exited early"
        out = TritonClient(f"127.0.0.1:{grpc_port}", "lc").predict(inputs["scenes"])
        np.testing.assert_array_equal(out["labels"], model(inputs["scenes"])["labels"])
        image = tmp_path / "x.png"
        image.write_bytes(tf.io.encode_png(inputs["scenes"][0]).numpy())
        main(["predict", "--server", f"grpc://127.0.0.1:{grpc_port}", "--protocol", "triton", str(image),
              "--out", str(tmp_path / "remote")])
        assert (tmp_path / "remote" / "x.png").is_file()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "server stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


CAMVID = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


@pytest.mark.skipif(not CAMVID.is_dir(), reason="real CamVid frames not present (../shared/data/camvid)")
def test_savedmodel_same_labels_on_real_images(model, saved):
    from keras_lc.data import list_pairs

    images, _ = list_pairs(CAMVID, "val")
    x = np.stack([tf.io.decode_png(tf.io.read_file(p), channels=3).numpy() for p in images[:2]])
    out = tf.saved_model.load(str(saved)).signatures["serving_default"](images=tf.constant(x))
    ref = model(x)
    np.testing.assert_array_equal(out["labels"], ref["labels"])
    np.testing.assert_array_equal(out["stage"], ref["stage"])


def test_export_never_deletes_an_existing_version(tmp_path, model):
    from keras_lc.cli import main
    from keras_lc.serving import write_triton_repository

    model.save(tmp_path / "m.keras")
    version = tmp_path / "x" / "lc" / "1"
    version.mkdir(parents=True)
    (version / "IMPORTANT.txt").write_text("keep")
    for extra in ([], ["--triton"]):
        with pytest.raises(SystemExit, match="exists; pick another --version, or pass --overwrite"):
            main(["export", str(tmp_path / "m.keras"), "--out", str(tmp_path / "x"), *extra])
        assert (version / "IMPORTANT.txt").read_text() == "keep"
    with pytest.raises(FileExistsError):
        write_triton_repository(model, tmp_path / "x", "lc", 1)
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="it is a file, not a folder"):
        main(["export", str(tmp_path / "m.keras"), "--out", str(tmp_path / "afile")])
    main(["export", str(tmp_path / "m.keras"), "--out", str(tmp_path / "x"), "--overwrite"])
    assert not (version / "IMPORTANT.txt").exists() and (version / "saved_model.pb").exists()
    assert [p.name for p in version.parent.iterdir()] == ["1"]  # no temporary folder left behind


def test_triton_batch_computes_each_image_at_its_own_rho(triton, model, inputs):
    import threading

    from keras_lc.serving import TritonClient

    x = inputs["scenes"][:2]
    want = np.concatenate([model(x[:1], rho=0.3)["stage"], model(x[1:], rho=1.0)["stage"]])
    assert not np.all(want[0] == 3) and np.all(want[1] == 3)
    for name in ("lc", "lc_onnx"):
        client = TritonClient(f"127.0.0.1:{triton.grpc_port}", name, protocol="grpc")
        np.testing.assert_array_equal(client.predict(x, rho=[0.3, 1.0])["stage"], want)
    # two clients at different rho at once: the dynamic batcher may queue them together
    results, errors = {}, []

    def ask(rho):
        try:
            c = TritonClient(f"127.0.0.1:{triton.grpc_port}", "lc", protocol="grpc")
            results[rho] = [c.predict(x, rho=rho)["stage"] for _ in range(4)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(r,)) for r in (0.3, 1.0)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not errors, errors
    for rho, answers in results.items():
        for stage in answers:
            np.testing.assert_array_equal(stage, model(x, rho=rho)["stage"])


@pytest.mark.parametrize("protocol, url", [("triton", "grpc://127.0.0.1:{port}"), ("triton", "http://127.0.0.1:{port}"),
                                           ("tfserving", "127.0.0.1:{port}")])
def test_predict_server_closed_port_is_one_line(tmp_path, inputs, protocol, url):
    pytest.importorskip("tritonclient.grpc", reason="the [serve] extra is not installed")
    from keras_lc.cli import main

    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(inputs["scenes"][0]).numpy())
    url = url.format(port=_free_port())  # nothing listens there
    with pytest.raises(SystemExit) as e:
        main(["predict", "--server", url, "--protocol", protocol, str(image), "--out", str(tmp_path / "o")])
    assert str(e.value).startswith(f"keras-lc: no answer from the {protocol} server at {url}")
    assert "\n" not in str(e.value)


def test_serve_failures_are_one_line_and_leave_no_temporary_copy(triton, model, tmp_path, capsys):
    import glob
    import tempfile

    from keras_lc.cli import main
    from keras_lc.serving import TritonServer, write_triton_repository

    def leftovers():
        return set(glob.glob(os.path.join(tempfile.gettempdir(), "keras_lc_triton_*")))

    before = leftovers()
    with pytest.raises(SystemExit, match="model repository not found"):
        main(["serve", "--model-repository", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match=f"port {triton.grpc_port} on 127.0.0.1 is not free"):
        main(["serve", "--model-repository", str(triton.repository), "--http-port", str(_free_port()),
              "--grpc-port", str(triton.grpc_port)])
    repo = tmp_path / "broken"
    write_triton_repository(model, repo, "lc", 1)
    (repo / "lc" / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonServer(repo, http_port=_free_port(), grpc_port=_free_port())
    with pytest.raises(RuntimeError, match="tritonserver exited with") as e:
        server.start(timeout_s=120)
    assert "\n" in str(e.value) and str(e.value).splitlines()[0].count(":") >= 1
    assert leftovers() == before


def test_halo_models_export_with_their_halo(model, tmp_path, inputs):
    import onnxruntime as ort

    halo = build_model("tiny", num_classes=4, rho=0.6, ignore_class=4, halo=1, **SMALL)
    halo.set_weights(model.get_weights())
    x = inputs["random"]  # at rho 0.6 it forwards a few cells (the scenes: none)
    ref = halo(x, rho=0.6)
    assert np.abs(ref["probs"].numpy() - model(x, rho=0.6)["probs"].numpy()).max() > 1e-4  # the halo matters here
    loaded = tf.saved_model.load(str(export_savedmodel(halo, tmp_path, "halo", 1, include_probs=True)))
    out = loaded.signatures["serving_rho"](images=tf.constant(x), rho=tf.constant(0.6))
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    session = ort.InferenceSession(str(export_onnx(halo, tmp_path / "h.onnx", include_probs=True)),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": x, "rho": np.array(0.6, np.float32)})))
    np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
    np.testing.assert_array_equal(got["stage"], ref["stage"])


def test_lite_model_with_a_halo_exports(tmp_path):
    """The flagship's kind of model (EfficientNet-Lite, dilated region depthwise convs in the phase layout, a
    halo) gives the Keras numbers through SavedModel and ONNX."""
    import onnxruntime as ort

    tf.keras.utils.set_random_seed(7)
    lite = build_model("efficientnet_lite0", num_classes=4, rho=0.6, dense_threshold=None, halo=1)
    x = np.random.default_rng(3).integers(0, 256, (1, 96, 128, 3)).astype(np.uint8)
    rho = float(np.quantile(lite(x, rho=1.0)["stage1"].numpy().max(-1), 0.5))
    ref = lite(x, rho=rho)
    assert 0 < (ref["stage"].numpy() > 1).mean() < 1  # partial regions: the region path runs
    loaded = tf.saved_model.load(str(export_savedmodel(lite, tmp_path, "lite", 1, include_probs=True)))
    out = loaded.signatures["serving_rho"](images=tf.constant(x), rho=tf.constant(rho))
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    session = ort.InferenceSession(str(export_onnx(lite, tmp_path / "lite.onnx", include_probs=True)),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": x, "rho": np.array(rho, np.float32)})))
    np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
    np.testing.assert_array_equal(got["stage"], ref["stage"])
    # CamVid's 360 rows are not a multiple of the grid's 16: a 72×104 frame is padded to 80×112 inside the graph
    # (a 5×7 stage grid, odd: the dilation-phase layout pads too) and cropped back, in ONNX as in TensorFlow
    # (TensorFlow's floor-mod of a negative size became ONNX's truncated mod once: negative pads, 64×96 labels).
    x = np.random.default_rng(5).integers(0, 256, (1, 72, 104, 3)).astype(np.uint8)
    for r in (rho, 1.0):
        got = dict(zip(names, session.run(None, {"images": x, "rho": np.array(r, np.float32)})))
        ref = lite(x, rho=r)
        assert got["labels"].shape == (1, 72, 104)
        np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
