"""load_imagenet_weights: Keras Applications' InceptionResNetV2 weights into IRNet-LC.

The real loading path is a weights file (e.g. Keras' `inception_resnet_v2_weights_tf_dim_
ordering_tf_kernels_notop.h5`, or any file `InceptionResNetV2(include_top=False).save_weights`
wrote): it is loaded into `keras.applications.InceptionResNetV2(weights=None)` and copied layer
by layer. Layers Keras names (`block35_i_conv`, `conv_7b`, `conv_7b_bn`, ...) are matched by
name; its unnamed conv+BN pairs by block and position within the block (Keras numbers them in
creation order). Missing or extra layers are listed, never silently skipped.
"""

import re
import warnings
from pathlib import Path

import keras

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


def load_imagenet_weights(model, path, strict=True):
    """Copy Keras Applications ImageNet weights from `path` into an IRNet-LC or ResNet-LC `model`.

    IRNet-LC takes `InceptionResNetV2(include_top=False)` weights; ResNet-LC takes
    `ResNet50`/`ResNet101(include_top=False)` weights (matched by layer name).

    Args:
        model: a LayerCascade built with `backbone="irnet"`.
        path: weights file of `keras.applications.InceptionResNetV2(include_top=False)`.
        strict: if True, any IRNet-LC layer without a source, or source layer without a
            destination (e.g. blocks beyond a smaller `block_counts`), raises a ValueError
            listing them; if False, they are listed in a warning and the rest is copied.

    Returns:
        dict with `copied` (names), `missing` (IRNet-LC layers left as they were) and
        `extra` (Keras layers not used).
    """
    from keras_lc.models.inception_resnet_v2 import IRNetStage
    from keras_lc.models.resnet import ResNetStage

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
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
