"""RegionDepthwiseConv2D: a depthwise k×k convolution on the compact trunk of a region."""

import keras
import tensorflow as tf

from keras_lc import kernels
from keras_lc.layers.region_index import _pair, as_region_index


@keras.saving.register_keras_serializable(package="keras_lc")
class RegionDepthwiseConv2D(keras.layers.Layer):
    """Depthwise convolution (one k×k filter per channel) computed only inside a region.

    Stride 1, 'same' zero padding, odd kernels, any dilation. The region's features are
    held compact (`[N, C]`, one row per region pixel); a neighbour outside the region (or the
    image) reads as zero, the paper's region-conv semantics. Three ways compute the same numbers:

    - `method="fused"`: one compiled op (`keras_lc.kernels.region_depthwise_taps`) reads each
      row's kh·kw neighbours from the compact rows through the region's neighbour table: the
      cost follows the region's size and nothing is written to a map. Measured on the 2-core
      CPU (docs/RESULTS.md, twenty-third session): stage 3 of the Lite0 flagship on a 30%
      region costs 0.42× its dense self this way, 0.54× by the map.
    - `method="map"`: the compact rows are written into a zero map (one gather through
      the inverse index), the dense depthwise kernel runs on it, and the region rows are read
      back (one gather). A dilated kernel runs undilated on the map's dilation-phase layout
      (`RegionIndex.scatter_phases`), written and read directly: TF's dilated depthwise conv
      copies the map into that layout and back (SpaceToBatch / BatchToSpace) on every call.
      A depthwise conv costs little next to the 1×1 convs around it, and one optimised
      kernel beats kh·kw small ops: measured on the 2-core CPU at 360×480, output
      stride 16, ρ 0.985, batch 8, stage 3 took 183 ms this way and 844 ms by taps (dense: 318 ms).
    - `method="taps"`: each output row is the sum over the kh·kw taps of the neighbour's row
      times the tap's weights, the neighbour rows looked up through the region's inverse index
      (`RegionIndex.compact_neighbours`): no map of the 6×-expanded features is ever written,
      at the price of kh·kw gathers.
    - `method="auto"` (default): "fused" where the compiled op is available and no GPU is visible
      (`keras_lc.kernels.preferred()`: it compiles on first use) and the features are float32, else
      "map". Exports trace inside `keras_lc.kernels.portable()`, where "auto" and "fused" take the
      map, so an exported graph holds TensorFlow ops only.

    With an all-true region the output equals
    `keras.layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=...)` with the
    same weights (`kernel` `[kh, kw, C, 1]`, Keras' layout; no bias).

    Args:
        kernel_size: int or pair of odd ints.
        dilation_rate: int or pair of ints. Defaults to 1.
        depthwise_initializer: initializer of the kernel.
        method: "auto", "fused", "map" or "taps" (see above).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: float `[B, H, W, C]`.
        region: bool `[B, H, W]` or a `RegionIndex`.

    Returns:
        float `[B, H, W, C]`: zeros outside the region; inside, the depthwise conv of the
        input with the values outside the region taken as zero.
    """

    METHODS = ("auto", "fused", "map", "taps")

    def __init__(self, kernel_size, dilation_rate=1, depthwise_initializer="glorot_uniform", method="auto", **kwargs):
        super().__init__(**kwargs)
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}; got {method!r}.")
        if method == "fused" and not kernels.available():
            raise RuntimeError(f"RegionDepthwiseConv2D(method='fused'): the compiled kernel is not available "
                               f"({kernels.unavailable_reason()}); method='auto' falls back to TensorFlow ops.")
        self.method = method
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if any(k % 2 == 0 or k < 1 for k in self.kernel_size):
            raise ValueError(f"RegionDepthwiseConv2D needs odd kernel sizes; got kernel_size={self.kernel_size}.")
        if any(d < 1 for d in self.dilation_rate):
            raise ValueError(f"dilation_rate must be >= 1; got {self.dilation_rate}.")
        self.depthwise_initializer = keras.initializers.get(depthwise_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("RegionDepthwiseConv2D needs a known channel count (last axis of the input).")
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, channels, 1),
                                      initializer=self.depthwise_initializer)

    def apply_dense(self, x, strides=1, kernel=None):
        """Plain dense depthwise conv of a full map `[B, H, W, C]` (TF 'SAME' padding, any stride).
        `kernel` replaces the layer's (a caller that folds a frozen BN into it)."""
        kernel = tf.cast(self.kernel if kernel is None else kernel, x.dtype)
        if strides != 1:  # TF does not combine strides and dilations; stride-2 blocks are never dilated
            return tf.nn.depthwise_conv2d(x, kernel, [1, strides, strides, 1], "SAME")
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=self.dilation_rate)

    compact_input = True  # `apply_compact` takes compact rows (neighbours through the index)

    def apply_compact(self, values, index, training=None, kernel=None, finish=None, phased=False):
        """Compact input -> compact output at the region pixels.

        Sparse index: `[N, C]` -> `[N, C]`. Dense index: `[B, H, W, C]` maps whose values
        outside the region are unspecified -> the same (masked here before the conv).
        `kernel` replaces the layer's (as in `apply_dense`); `finish`, a per-pixel function
        (bias, activation), is applied to the conv's output: on the map before the rows are
        read back, where oneDNN fuses it into the depthwise conv. `phased` (dense index only):
        `values` and the index are in the dilation-phase layout of this layer's dilation
        (`region_index.to_phases`), so the kernel runs undilated.
        """
        finish = finish or (lambda t: t)
        if index.dense and phased:
            kernel = tf.cast(self.kernel if kernel is None else kernel, values.dtype)
            return finish(tf.nn.depthwise_conv2d(index.masked(values), kernel, [1, 1, 1, 1], "SAME"))
        if index.dense:
            return finish(self.apply_dense(index.masked(values), kernel=kernel))
        method = self.resolved_method(values.dtype)
        if method == "fused":
            taps = index.compact_neighbours(self.kernel_size, self.dilation_rate)  # [N, kh*kw], N = zero row
            kernel = self.kernel if kernel is None else kernel
            kernel = tf.reshape(tf.cast(kernel, tf.float32), [-1, tf.shape(values)[1]])  # [kh*kw, C]
            out = kernels.region_depthwise_taps(tf.cast(values, tf.float32), taps, kernel)
            return finish(tf.cast(out, values.dtype))
        if method == "map" and self.dilation_rate != (1, 1):  # the map in its dilation-phase layout
            phases = index.scatter_phases(values, self.dilation_rate)
            kernel = tf.cast(self.kernel if kernel is None else kernel, values.dtype)
            y = finish(tf.nn.depthwise_conv2d(phases, kernel, [1, 1, 1, 1], "SAME"))
            return index.gather_phases(y, self.dilation_rate)
        if method == "map":
            return index.gather(finish(self.apply_dense(index.scatter(values), kernel=kernel)))
        taps = index.compact_neighbours(self.kernel_size, self.dilation_rate)  # [N, kh*kw], N = zero row
        zero = tf.zeros(tf.stack([1, tf.shape(values)[1]]), values.dtype)
        padded = tf.concat([values, zero], axis=0)
        kernel = self.kernel if kernel is None else kernel
        kernel = tf.reshape(tf.cast(kernel, values.dtype), [-1, tf.shape(values)[1]])  # [kh*kw, C]
        # One gather per tap, accumulated: the [N, kh*kw, C] patch tensor of a single gather would be
        # kh*kw times the expanded trunk (25x for the 5x5 kernels).
        out = None
        for t in range(self.kernel_size[0] * self.kernel_size[1]):
            term = tf.gather(padded, taps[:, t]) * kernel[t]
            out = term if out is None else out + term
        return finish(out)

    def resolved_method(self, dtype=tf.float32):
        """The way the sparse path computes here, now: "fused", "map" or "taps" ("auto" resolved;
        inside `keras_lc.kernels.portable()` "auto" and "fused" give "map")."""
        if self.method in ("map", "taps"):
            return self.method
        if kernels.in_portable():
            return "map"
        if self.method == "fused" or (kernels.preferred() and tf.as_dtype(dtype) == tf.float32):
            return "fused"
        return "map"

    def call(self, inputs, region):
        index = as_region_index(region)
        index.check_features(inputs, "RegionDepthwiseConv2D inputs")
        return index.scatter(self.apply_compact(index.gather(inputs), index))

    def compute_output_shape(self, input_shape, region_shape=None):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_size": self.kernel_size,
            "dilation_rate": self.dilation_rate,
            "depthwise_initializer": keras.initializers.serialize(self.depthwise_initializer),
            "method": self.method,
        })
        return config
