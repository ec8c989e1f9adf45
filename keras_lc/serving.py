"""Serving: a Triton model repository, the `tritonserver` launcher, and Triton / TF Serving clients.

The Triton server is the real one shipped in the `nvidia-pytriton` wheel (extra
`[serve]`); it runs the exported SavedModel (or ONNX file) in Triton's Python backend.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_lc.export import export_onnx, staged_folder, version_folder, write_savedmodel

# --------------------------------------------------------------------------- repository
# The Triton Python-backend model is a real module (keras_lc/triton_model.py), copied as <version>/model.py.
_MODEL_FILE = Path(__file__).with_name("triton_model.py")

_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "images", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ], optional: true }},
  {{ name: "image_bytes", data_type: TYPE_STRING, dims: [ 1 ], optional: true }},
  {{ name: "rho", data_type: TYPE_FP32, dims: [ 1 ], optional: true }}
]
output [
  {{ name: "labels", data_type: TYPE_INT32, dims: [ -1, -1 ] }},
  {{ name: "stage", data_type: TYPE_UINT8, dims: [ -1, -1 ] }}{probs}
]
instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]
{batching}'''


DEFAULT_MAX_PIXELS = 4 * 1920 * 1080  # per request: four full-HD frames (a 6000x6000 image took 105 s and 4.7 GB)


def write_triton_repository(model, repository, name="lc", version=1, fmt="savedmodel", include_probs=False,
                            instances=1, max_batch_size=8, overwrite=False, max_pixels=DEFAULT_MAX_PIXELS):
    """Write `repository/<name>/config.pbtxt` and `repository/<name>/<version>/` for Triton's Python backend.

    The version folder holds `model.py`, `keras_lc.json` and `model.savedmodel/`
    (or `model.onnx` with `fmt="onnx"`). Requests carry `images` (UINT8 [B, H, W, 3])
    or `image_bytes` (BYTES [B, 1], encoded PNG/JPEG), and optionally `rho` (FP32
    [B, 1], one per image: each image is computed at its own ρ); responses `labels` and `stage` (and `probs` if
    exported). Triton's dynamic batcher is on: it queues concurrent requests and hands
    them to the backend together. Images of one request share a size.

    `instances` model instances (Triton's instance_group) serve requests in parallel; a request with more
    than `max_pixels` pixels (B x H x W; None: no cap) is refused with INVALID_ARG before it runs.
    An existing version is an error unless `overwrite`; the version folder is built under a
    temporary name next to it and moved into place, so a polling server never sees half a model.
    """
    if fmt not in ("savedmodel", "onnx"):
        raise ValueError(f"fmt must be 'savedmodel' or 'onnx'; got {fmt!r}.")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise ValueError(f"instances must be a positive integer; got {instances!r}.")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive integer or None; got {max_pixels!r}.")
    root = Path(repository) / name
    vdir = version_folder(repository, name, version, overwrite)
    with staged_folder(vdir) as tmp_vdir:
        if fmt == "onnx":
            export_onnx(model, tmp_vdir / "model.onnx", include_probs=include_probs)
        else:
            write_savedmodel(model, tmp_vdir / "model.savedmodel", include_probs)
        (tmp_vdir / "keras_lc.json").write_text(json.dumps(
            {"num_classes": model.num_classes, "rho": model.rho, "ignore_class": model.ignore_class, "format": fmt,
             "include_probs": include_probs, "max_pixels": max_pixels}, indent=1))
        shutil.copy(_MODEL_FILE, tmp_vdir / "model.py")
    probs = ',\n  { name: "probs", data_type: TYPE_FP32, dims: [ -1, -1, -1 ] }' if include_probs else ""
    batching = "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    config = root / ".config.pbtxt.partial"
    config.write_text(_CONFIG.format(name=name, probs=probs, instances=int(instances), batching=batching,
                                     max_batch_size=int(max_batch_size)))
    os.replace(config, root / "config.pbtxt")
    return root


# --------------------------------------------------------------------------- server
class TritonServer:
    """The real `tritonserver` (from nvidia-pytriton) on a model repository, bound to `host`.

    Use as a context manager, or `start()` / `stop()`. `start` waits until the server
    reports ready (or raises with the server's log after `timeout_s`).
    """

    def __init__(self, model_repository, host="127.0.0.1", http_port=8000, grpc_port=8001, log_file=None):
        self.repository = Path(model_repository)
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.repository}")
        self.host, self.http_port, self.grpc_port = host, int(http_port), int(grpc_port)
        self.log_file = log_file
        self.process = None
        self._workspace = None

    def _prepare(self):
        from keras_lc._compat import tritonserver_files

        try:
            server_dir, stub, libs_dir = tritonserver_files(f"{sys.version_info[0]}.{sys.version_info[1]}")
        except ImportError:
            raise ImportError("serving needs the [serve] extra: pip install 'keras_lc[serve]'") from None
        self._workspace = Path(tempfile.mkdtemp(prefix="keras_lc_triton_"))
        dist = self._workspace / "tritonserver"
        shutil.copytree(server_dir, dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(stub, dist / "backends" / "python" / "triton_python_backend_stub")
        env = os.environ.copy()
        # The Python-backend stub embeds this interpreter's libpython; the server needs pytriton's libs.
        libs = [sysconfig.get_config_var("LIBDIR"), str(libs_dir)]
        env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PYTHONPATH"] = ":".join(p for p in sys.path if p)  # the stub imports tensorflow, numpy from here
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return dist, env

    def command(self, dist):
        return [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={dist / 'backends'}",
            f"--cache-directory={dist / 'caches'}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--strict-readiness=true", "--exit-on-error=true", "--exit-timeout-secs=5",
        ]

    def start(self, timeout_s=120):
        """Start the server and wait until it is ready. A failed start (port in use, a model that does not
        load, timeout) raises with the reason on the first line and removes the server's temporary copy."""
        for port in (self.http_port, self.grpc_port):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, port))
                except OSError as e:
                    raise OSError(f"port {port} on {self.host} is not free ({e.strerror}); "
                                  "choose others with --http-port/--grpc-port") from None
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s):
        dist, env = self._prepare()
        log = open(self.log_file, "w") if self.log_file else subprocess.DEVNULL
        self._log_path = self.log_file
        if not self.log_file:
            self._log_path = self._workspace / "server.log"
            log = open(self._log_path, "w")
        self.process = subprocess.Popen(self.command(dist), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        import tritonclient.http as triton_http

        deadline = time.time() + timeout_s
        client = triton_http.InferenceServerClient(f"{self.host}:{self.http_port}", connection_timeout=2.0)
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}: {self.log_reason()}\n"
                                   f"{self.log_tail()}")
            try:
                if client.is_server_ready():
                    return self
            except Exception:  # noqa: BLE001 - not listening yet (connection refused, reset, timeout)
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver was not ready after {timeout_s} s: {self.log_reason()}\n{self.log_tail()}")

    def log_reason(self):
        """The server log's first error line (Triton prefixes them with E), or its last line."""
        lines = [ln.strip() for ln in self.log_tail(200_000).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E") or "error" in ln.lower() or "failed" in ln.lower()]
        return (errors or lines or ["no log"])[0][:400]

    def log_tail(self, n=4000):
        try:
            return Path(self._log_path).read_text(errors="replace")[-n:]
        except (OSError, AttributeError):
            return ""

    def stop(self, timeout_s=30):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None

    def __enter__(self):
        return self if self.process is not None else self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- clients
def _split_url(url, default_port):
    url = url.split("://", 1)[-1]
    host, _, port = url.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (url, default_port)


class TritonClient:
    """Triton client over gRPC or HTTP (tritonclient). `predict` returns numpy arrays.

    Args:
        url: "host:port" (or "grpc://host:port", "http://host:port").
        model_name: the repository's model name.
        protocol: "grpc" or "http" (default: from the url's scheme, else grpc).
    """

    def __init__(self, url, model_name="lc", protocol=None, timeout_s=60):
        if protocol is None:
            protocol = "http" if url.startswith("http") else "grpc"
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http'; got {protocol!r}.")
        self.protocol, self.model_name, self.timeout_s = protocol, model_name, timeout_s
        host, port = _split_url(url, 8001 if protocol == "grpc" else 8000)
        if protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self._tc = tc
        self.client = tc.InferenceServerClient(f"{host}:{port}")

    def predict(self, images=None, rho=None, image_bytes=None):
        """`images` uint8 [B, H, W, 3] (or `image_bytes`: list of encoded images) → {"labels", "stage", ...}."""
        tc = self._tc
        inputs = []
        if images is not None and np.ndim(images) != 4:
            raise ValueError(f"images must be a batch [B, H, W, 3] (rank 4); got shape {np.shape(images)} "
                             "(one image: images[None])")
        batch = len(images) if images is not None else len(image_bytes or [])
        if images is not None:
            images = np.ascontiguousarray(images)
            t = tc.InferInput("images", list(images.shape), "UINT8" if images.dtype == np.uint8 else
                              {np.dtype("float32"): "FP32", np.dtype("int32"): "INT32"}.get(images.dtype, "FP64"))
            t.set_data_from_numpy(images)
            inputs.append(t)
        if image_bytes is not None:
            data = np.array([[bytes(b)] for b in image_bytes], dtype=np.object_)
            t = tc.InferInput("image_bytes", [len(data), 1], "BYTES")
            t.set_data_from_numpy(data)
            inputs.append(t)
        if rho is not None:
            t = tc.InferInput("rho", [batch, 1], "FP32")  # one value, or one per image
            values = np.asarray(rho, np.float32).reshape(-1)
            t.set_data_from_numpy(np.broadcast_to(values, (batch,)).reshape(batch, 1).copy())
            inputs.append(t)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {"timeout": int(self.timeout_s)}
        try:
            result = self.client.infer(self.model_name, inputs, **kwargs)
        except TypeError:
            result = self.client.infer(self.model_name, inputs)
        out = {"labels": result.as_numpy("labels"), "stage": result.as_numpy("stage")}
        probs = result.as_numpy("probs")
        if probs is not None:
            out["probs"] = probs
        return out

    def ready(self):
        return bool(self.client.is_model_ready(self.model_name))


class TFServingClient:
    """TF Serving client over gRPC (tensorflow-serving-api `PredictionService`).

    Args:
        address: "host:port" (or "grpc://host:port").
        model_name: the served model's name; signature: default "serving_default"
        (a request with `rho` uses "serving_rho").
    """

    def __init__(self, address, model_name="lc", timeout_s=60):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        host, port = _split_url(address, 8500)
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.timeout_s = model_name, timeout_s

    def predict(self, images=None, rho=None, image_bytes=None):
        if images is not None and np.ndim(images) != 4:
            raise ValueError(f"images must be a batch [B, H, W, 3] (rank 4); got shape {np.shape(images)} "
                             "(one image: images[None])")
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        key = "images" if images is not None else "image_bytes"
        signature = {("images", False): "serving_default", ("images", True): "serving_rho",
                     ("image_bytes", False): "serving_image_bytes",
                     ("image_bytes", True): "serving_image_bytes_rho"}[key, rho is not None]
        if rho is not None:
            request.inputs["rho"].CopyFrom(tf.make_tensor_proto(np.float32(rho)))
        request.model_spec.signature_name = signature
        value = np.asarray(images) if images is not None else np.array([bytes(b) for b in image_bytes], object)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = self.stub.Predict(request, timeout=self.timeout_s)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        request.metadata_field.append("signature_def")
        return self.stub.GetModelMetadata(request, timeout=self.timeout_s)

    def close(self):
        self.channel.close()
