"""Frozen BatchNormalization folded into its convolution once, for inference.

Every conv + frozen BN unit of the pretrained backbones (`RegionConvBN`, the depthwise conv of
`MBConvBlock`) folds the BN into the conv's kernel and bias on each call: `kernel * scale`,
`beta - mean * scale`. That is right while the weights can change (training, weights loaded
later), but in a forward pass it is work on the weights alone, and the kernel multiply is not
small: on the Lite0 flagship at 360×480 batch 1 those `Mul` ops took 3.3 of 41 op-ms of the
dense forward pass (benchmarks/profile_forward.py). Inside `folded_batchnorm(model)` each unit's
folded `(kernel, bias)` is computed once into variables, and functions traced there read them.

    with folded_batchnorm(model):
        fn = tf.function(lambda x: model(x)["labels"])
        fn(images)  # traced here: the folded weights are captured variables

A function traced inside keeps the weights of that moment: retrace (or re-enter) after the
weights change. Training inside the context is refused (`check_not_folded`).
"""

import contextlib
import functools

import tensorflow as tf

_FOLDED = {}  # id(unit) -> (kernel, bias) tf.Variables, while a `folded_batchnorm` context is open


def folded_weights(unit, dtype, compute):
    """The unit's `(kernel, bias)` in `dtype`: frozen by an open `folded_batchnorm`, else `compute(dtype)`."""
    frozen = _FOLDED.get(id(unit))
    if frozen is None:
        return compute(dtype)
    return tuple(v if v.dtype == dtype else tf.cast(v, dtype) for v in frozen)


def _units(model):
    # Keras has no public recursive layer walk; `_flatten_layers` is what its own tracking uses.
    # Anything else (a stand-in model) has no units to fold.
    walk = getattr(model, "_flatten_layers", None)
    layers = walk(include_self=True, recursive=True) if callable(walk) else []
    return [layer for layer in layers if callable(getattr(layer, "compute_folded", None))]


def is_folded(model):
    """True while a `folded_batchnorm(model)` context is open."""
    return any(id(u) in _FOLDED for u in _units(model))


def check_not_folded(model, what="training"):
    if is_folded(model):
        raise RuntimeError(f"{what} inside folded_batchnorm(model): the folded weights would not follow the "
                           "trained ones; leave the context first.")


@contextlib.contextmanager
def folded_batchnorm(model):
    """Context: the frozen BN of every conv + BN unit of `model` folded once into new variables
    (float32, not trainable), which functions traced inside read instead of folding per call.

    Yields the list of those variables (a SavedModel that captures them must track them).
    Nested use on the same model reuses the outer context's variables.
    """
    units = [u for u in _units(model) if id(u) not in _FOLDED]
    added = []
    try:
        for unit in units:
            kernel, bias = unit.compute_folded(tf.float32)
            frozen = (tf.Variable(kernel, trainable=False, name=f"{unit.name}_folded_kernel"),
                      tf.Variable(bias, trainable=False, name=f"{unit.name}_folded_bias"))
            _FOLDED[id(unit)] = frozen
            added.append(unit)
        yield [v for u in _units(model) for v in _FOLDED[id(u)]]
    finally:
        for unit in added:
            _FOLDED.pop(id(unit), None)


def with_folded_batchnorm(fn):
    """Decorator: `fn(model, ...)` (an inference-only routine that traces its own functions) runs
    inside `folded_batchnorm(model)`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with folded_batchnorm(model):
            return fn(model, *args, **kwargs)

    return wrapper
