"""Export a LayerCascade: a SavedModel for TF Serving, ONNX, and a Triton model repository.

SavedModel signatures (TF Serving needs every input of a signature in each request,
so the per-request ρ comes as separate signatures rather than an optional input):

| signature                  | inputs                                         |
|----------------------------|------------------------------------------------|
| `serving_default`          | `images` uint8 `[B, H, W, 3]`                  |
| `serving_rho`              | `images`, `rho` float32 scalar in (0, 1]       |
| `serving_image_bytes`      | `image_bytes` string `[B]` (PNG/JPEG/BMP/GIF)  |
| `serving_image_bytes_rho`  | `image_bytes`, `rho`                           |
| `serving_multiscale`       | `images`, `rho` (only when exported with `scales`) |

Outputs: `labels` int32 `[B, H, W]` (input resolution), `stage` uint8 `[B, H, W]`
(the deciding stage), and `probs` float32 `[B, H, W, K]` only if exported with
`include_probs=True`. Images of one request share one size.

`serving_multiscale` is `LayerCascade.predict_multiscale` with the scales, flip and fusion fixed at
export time (one graph, each scale a full cascade at the request's ρ): `labels`, `stage` (the deciding
stage of the pass at the scale nearest 1) and, with `include_probs`, the fused `probs`.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from keras_lc import kernels
from keras_lc.layers.stage_head import check_rho_tensor
from keras_lc.models.folding import folded_batchnorm

SIGNATURES = ("serving_default", "serving_rho", "serving_image_bytes", "serving_image_bytes_rho")


def _checked_images(images):
    shape = tf.shape(images)
    check = tf.debugging.Assert(
        tf.logical_and(shape[1] > 0, shape[2] > 0),
        ["keras_lc: images must have a non-zero height and width; got shape", shape],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _decode(image_bytes):
    def one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def serving_functions(model, include_probs=False, scales=None, flip=False, fusion="mean"):
    """The serving `tf.function`s of `model`, keyed by signature name: the four of `SIGNATURES`,
    and `serving_multiscale` when `scales` is given (with `flip` and `fusion`, as
    `LayerCascade.predict_multiscale`)."""

    def outputs(images, rho):
        out = model.forward_details(_checked_images(images), rho=rho, training=False, dense=False)
        result = {"labels": out["labels"], "stage": out["stage"]}
        if include_probs:
            result["probs"] = out["probs"]
        return result

    images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    rho_spec = tf.TensorSpec([], tf.float32, name="rho")

    rho_now = model.rho  # a Python number while tracing: at ρ = 1 the dense graph, with no switch in it

    @tf.function(input_signature=[images_spec])
    def serving_default(images):
        return outputs(images, rho_now)

    @tf.function(input_signature=[images_spec, rho_spec])
    def serving_rho(images, rho):
        return outputs(images, check_rho_tensor(rho))

    @tf.function(input_signature=[bytes_spec])
    def serving_image_bytes(image_bytes):
        return outputs(_decode(image_bytes), rho_now)

    @tf.function(input_signature=[bytes_spec, rho_spec])
    def serving_image_bytes_rho(image_bytes, rho):
        return outputs(_decode(image_bytes), check_rho_tensor(rho))

    fns = {
        "serving_default": serving_default,
        "serving_rho": serving_rho,
        "serving_image_bytes": serving_image_bytes,
        "serving_image_bytes_rho": serving_image_bytes_rho,
    }
    if scales is not None:
        from keras_lc.models.cascade import FUSIONS, check_scales

        scales = check_scales(scales)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}.")

        @tf.function(input_signature=[images_spec, rho_spec])
        def serving_multiscale(images, rho):
            out = model.predict_multiscale(_checked_images(images), scales=scales, flip=flip,
                                           rho=check_rho_tensor(rho), fusion=fusion)
            result = {"labels": out["labels"], "stage": out["stage"]}
            if include_probs:
                result["probs"] = out["probs"]
            return result

        fns["serving_multiscale"] = serving_multiscale
    return fns


def version_folder(out_dir, name, version, overwrite=False):
    """`out_dir/<name>/<version>` after checking the name, the version and that the folder is free.

    An existing version is an error naming it unless `overwrite` (a server may be serving it);
    an unwritable or non-folder `out_dir` is an error before any work is done.
    """
    if isinstance(version, bool) or int(version) != version or int(version) < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's layout); got {version!r}.")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain folder name; got {name!r}.")
    path = Path(out_dir) / name / str(int(version))
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot export under {parent}: it is a file, not a folder.")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"cannot export under {parent}: the folder is not writable.")
            break
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pick another --version, or pass --overwrite to replace it.")
    return path


@contextlib.contextmanager
def staged_folder(path):
    """Build a folder under a temporary name next to `path`, then move it into place.

    A polling server never sees half a model, and a failed or killed export leaves the
    previous `path` as it was (an existing one is swapped out only once the new one is
    complete). Yields the temporary folder to write into.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_savedmodel(model, out_dir="saved_models", name="lc", version=1, include_probs=False, overwrite=False,
                      scales=None, flip=False, fusion="mean"):
    """Write a SavedModel in TF Serving's layout, `out_dir/<name>/<version>/`. Returns that path.

    The model's current ρ becomes the default of the signatures without `rho`. With `scales`
    (and `flip`, `fusion`), a `serving_multiscale` signature is added. An existing version is an
    error unless `overwrite`; the export is built next to it and moved into place.
    """
    path = version_folder(out_dir, name, version, overwrite)
    fns = serving_functions(model, include_probs, scales, flip, fusion)  # bad scales fail before any writing
    with staged_folder(path) as tmp:
        write_savedmodel(model, tmp, include_probs, fns,
                          None if scales is None else {"scales": list(map(float, scales)), "flip": bool(flip),
                                                       "fusion": fusion})
    return path


def write_savedmodel(model, path, include_probs=False, fns=None, multiscale=None):
    """The SavedModel of `model` (signatures `fns`, default the four of `SIGNATURES`) and its
    `keras_lc.json` written into the folder `path` (no version layout: what `export_savedmodel` and the
    Triton repository stage). `multiscale`: the settings of a `serving_multiscale` signature, recorded."""
    module = tf.Module()
    module.weights = list(model.variables)  # the variables alone, as keras.export.ExportArchive does: saving the Keras
    # object too re-traces its layers (the whole save 1.3-1.9x slower: benchmarks/export_save_time.py)
    fns = fns or serving_functions(model, include_probs)
    for fn_name, fn in fns.items():
        setattr(module, fn_name, fn)
    # traced here: the signatures read BN folded once, not per call, and hold TensorFlow ops only (no compiled
    # keras_lc kernel, which TF Serving and Triton do not have)
    with folded_batchnorm(model) as folded, kernels.portable():
        module.folded_weights = folded
        tf.saved_model.save(module, str(path), signatures=fns)
    info = {"num_classes": model.num_classes, "rho": model.rho, "ignore_class": model.ignore_class,
            "include_probs": include_probs, "signatures": list(fns)}
    if multiscale is not None:
        info["multiscale"] = multiscale
    (Path(path) / "keras_lc.json").write_text(json.dumps(info, indent=1))
    return path


def export_onnx(model, path, include_probs=False, opset=17):
    """Convert the `serving_rho` function (inputs `images` uint8, `rho` float32) to ONNX with tf2onnx."""
    try:
        import tf2onnx
    except ImportError:
        raise ImportError("ONNX export needs the [onnx] extra: pip install 'keras_lc[onnx]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # tf2onnx loses the kernel shapes of convolutions inside a tf.cond branch, so the ONNX
    # graph has no automatic dense fallback: region stages always take the gather/scatter path
    # (same outputs; the fallback is only a speed choice).
    threshold, model.dense_threshold = model.dense_threshold, None
    try:
        fn = serving_functions(model, include_probs)["serving_rho"]
        with kernels.portable():  # TensorFlow ops only: onnxruntime has no compiled keras_lc kernel
            tf2onnx.convert.from_function(
                fn,
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
                                 tf.TensorSpec([], tf.float32, name="rho")],
                opset=opset,
                output_path=str(path),
            )
    finally:
        model.dense_threshold = threshold
    return path
