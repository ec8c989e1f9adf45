"""Triton Python backend for a keras_lc Deep Layer Cascade.

`keras-lc export --triton` copies this file as `<repository>/<name>/<version>/model.py`, next to
`keras_lc.json` (format, include_probs, the default rho) and the model (`model.savedmodel/` or `model.onnx`).
It needs numpy and TensorFlow (or onnxruntime) in the server's Python, not keras_lc.
"""
import json
import os

import numpy as np

try:  # inside Triton's Python backend; elsewhere the module still imports (tests, linters)
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only Triton provides it
    pb_utils = None


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(__file__)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self.tf = tf
        with open(os.path.join(here, "keras_lc.json")) as f:
            self.info = json.load(f)
        self.format, self.include_probs = self.info["format"], self.info["include_probs"]
        if self.format == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), providers=["CPUExecutionProvider"])
        else:
            self.model = tf.saved_model.load(os.path.join(here, "model.savedmodel"))
            self.signature = self.model.signatures["serving_rho"]

    def _run(self, images, rho):
        if self.format == "onnx":
            names = [o.name for o in self.session.get_outputs()]
            values = self.session.run(None, {"images": images, "rho": np.array(rho, np.float32)})
            return dict(zip(names, values))
        out = self.signature(images=self.tf.constant(images), rho=self.tf.constant(rho, self.tf.float32))
        return {k: v.numpy() for k, v in out.items()}

    def _encoded_size(self, data):
        """(H, W) from a PNG or JPEG header, None for other formats (they are checked after decoding)."""
        if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
            return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        if data[:2] == b"\xff\xd8":
            try:
                h, w, _ = self.tf.io.extract_jpeg_shape(data).numpy()
                return int(h), int(w)
            except Exception:  # a corrupt header: the decoder reports it
                return None
        return None

    def _check_size(self, shape):
        limit = self.info.get("max_pixels")
        pixels = int(shape[0]) * int(shape[1]) * int(shape[2])
        if limit and pixels > limit:
            raise ValueError(f"the request has {pixels:,} pixels ({int(shape[0])} x {int(shape[1])}x{int(shape[2])}); "
                             f"this model serves at most {limit:,} per request (export --max-pixels)")

    def _one(self, request):
        images = pb_utils.get_input_tensor_by_name(request, "images")
        encoded = pb_utils.get_input_tensor_by_name(request, "image_bytes")
        rho_in = pb_utils.get_input_tensor_by_name(request, "rho")
        if (images is None) == (encoded is None):
            raise ValueError("send exactly one of the inputs 'images' (UINT8 [B, H, W, 3]) or 'image_bytes'")
        if images is not None:
            x = images.as_numpy()
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"images must be UINT8 [B, H, W, 3]; got shape {list(x.shape)}")
            if 0 in x.shape:
                raise ValueError(f"images must not be empty; got shape {list(x.shape)}")
            self._check_size(x.shape)
        else:
            data = encoded.as_numpy().reshape(-1)
            decoded = []
            for i, item in enumerate(data):
                size = self._encoded_size(bytes(item))
                if size is not None:  # the size is in the header: refuse before decoding
                    self._check_size((len(data), *size))
                try:
                    decoded.append(self.tf.io.decode_image(bytes(item), channels=3, expand_animations=False).numpy())
                except Exception:
                    raise ValueError(f"image_bytes[{i}] is not a PNG/JPEG/BMP/GIF image") from None
            if len({d.shape for d in decoded}) != 1:
                raise ValueError("the images of one request must share one size")
            self._check_size((len(decoded), *decoded[0].shape))
            x = np.stack(decoded)
        x = np.ascontiguousarray(x, np.uint8)
        # One rho per image ([B, 1]): images of one batch (a client's, or requests Triton merged) may carry
        # different rho; each group of equal rho runs at its own, then the answers go back in order.
        rho = np.full(len(x), self.info["rho"], np.float32) if rho_in is None else \
            np.asarray(rho_in.as_numpy(), np.float32).reshape(-1)
        if rho.size == 1:
            rho = np.repeat(rho, len(x))
        if rho.size != len(x):
            raise ValueError(f"rho must have one value per image ({len(x)}); got {rho.size}")
        if not np.all((rho > 0.0) & (rho <= 1.0)):
            raise ValueError(f"rho must be in (0, 1]; got {rho.tolist()}")
        out = None
        for value in np.unique(rho):
            rows = np.flatnonzero(rho == value)
            part = self._run(x[rows], float(value))
            if out is None:
                out = {k: np.empty((len(x), *v.shape[1:]), v.dtype) for k, v in part.items()}
            for k, v in part.items():
                out[k][rows] = v
        tensors = [pb_utils.Tensor("labels", out["labels"].astype(np.int32)),
                   pb_utils.Tensor("stage", out["stage"].astype(np.uint8))]
        if self.include_probs:
            tensors.append(pb_utils.Tensor("probs", out["probs"].astype(np.float32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ValueError as e:  # the request's fault: INVALID_ARG (HTTP 400); the server keeps serving
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
                error = pb_utils.TritonError(f"keras_lc: {e}", code) if code is not None else \
                    pb_utils.TritonError(f"keras_lc: {e}")
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as e:  # the model's fault: INTERNAL (HTTP 500)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"keras_lc: {e}")))
        return responses
