"""RegionConv2D: a 2D convolution evaluated only inside a region."""

import keras
import tensorflow as tf

from keras_lc.layers.region_index import _pair, as_region_index


@keras.saving.register_keras_serializable(package="keras_lc")
class RegionConv2D(keras.layers.Layer):
    """2D convolution computed only at the pixels of a region (the paper's §3.2).

    Stride 1, 'same' zero padding, odd kernel sizes (square or factorised, e.g.
    `(1, 7)`), any dilation. For each region pixel the (dilated) k×k neighbourhood
    is gathered from the dense input, all of them are multiplied with the kernel in
    one matmul, and the result is scattered back; pixels outside the region are 0.
    With an all-true region the output equals
    `keras.layers.Conv2D(filters, kernel_size, padding="same")` with the same weights.

    The weights have Conv2D's layout (`kernel` `[kh, kw, C, F]`, `bias` `[F]`), so
    `set_weights(conv2d.get_weights())` works both ways.

    Args:
        filters: int, output channels F.
        kernel_size: int or pair of odd ints.
        dilation_rate: int or pair of ints. Defaults to 1.
        use_bias: bool. Defaults to True.
        activation: activation name or callable applied to the region values.
        kernel_initializer, bias_initializer, kernel_regularizer: as in Conv2D.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: float tensor `[B, H, W, C]`.
        region: bool tensor `[B, H, W]`, or a `RegionIndex` shared by a stage.

    Returns:
        float tensor `[B, H, W, F]`, zeros outside the region.

    Example:
    >>> x = tf.random.normal([2, 16, 16, 8])
    >>> region = tf.random.uniform([2, 16, 16]) < 0.3
    >>> y = RegionConv2D(4, 3)(x, region)  # [2, 16, 16, 4]
    """

    def __init__(
        self,
        filters,
        kernel_size,
        dilation_rate=1,
        use_bias=True,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        if any(k % 2 == 0 or k < 1 for k in self.kernel_size):
            raise ValueError(
                f"RegionConv2D needs odd kernel sizes ('same' padding is then symmetric); "
                f"got kernel_size={self.kernel_size}."
            )
        if any(d < 1 for d in self.dilation_rate):
            raise ValueError(f"dilation_rate must be >= 1; got {self.dilation_rate}.")
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @property
    def is_pointwise(self):
        return self.kernel_size == (1, 1)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("RegionConv2D needs a known channel count (last axis of the input).")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    # ---------------------------------------------------------------- compute
    def _finish(self, y, bias=None):
        if bias is not None:
            y = tf.nn.bias_add(y, bias)  # BiasAdd (not AddV2): oneDNN fuses it into the conv/matmul
        elif self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y) if self.activation is not None else y

    def apply_at(self, x, index, training=None, kernel=None, bias=None):
        """Dense input `[B, H, W, C]` -> compact output at the region pixels.

        Compact means `[N, F]` for a sparse index and `[B, H, W, F]` (values outside
        the region unspecified) for a dense one; finish with `index.scatter`.
        `kernel`/`bias` replace the layer's (a caller that folds a frozen BN into them).
        """
        kernel = tf.cast(self.kernel if kernel is None else kernel, x.dtype)
        if index.dense:
            y = tf.nn.convolution(x, kernel, padding="SAME", dilations=self.dilation_rate)
        elif self.is_pointwise:
            y = tf.matmul(index.gather(x), kernel[0, 0])
        else:
            patches = index.gather_neighbourhoods(x, self.kernel_size, self.dilation_rate)
            y = tf.matmul(patches, tf.reshape(kernel, [-1, self.filters]))
        return self._finish(y, bias)

    @property
    def compact_input(self):
        """Whether `apply_compact` works: 1×1 kernels need no neighbours."""
        return self.is_pointwise

    def apply_compact(self, values, index=None, training=None, kernel=None, bias=None):
        """Compact input -> compact output; only for 1×1 kernels (no neighbours needed).
        `kernel`/`bias` replace the layer's (as in `apply_at`)."""
        if not self.is_pointwise:
            raise ValueError("apply_compact needs a 1x1 kernel; use apply_at for k×k kernels.")
        kernel = tf.cast(self.kernel if kernel is None else kernel, values.dtype)[0, 0]
        if values.shape.rank == 2:
            return self._finish(tf.matmul(values, kernel), bias)
        # a map: one 2-D matmul with its bias on the flattened pixels (MatMul + BiasAdd fuse; after a
        # reshape, as tensordot would leave it, they do not)
        rows = tf.reshape(values, [-1, tf.shape(values)[-1]])
        y = self._finish(tf.matmul(rows, kernel), bias)
        return tf.reshape(y, tf.concat([tf.shape(values)[:-1], [self.filters]], axis=0))

    def apply_dense(self, x, strides=1, kernel=None, bias=None):
        """The plain dense conv of a full map `[B, H, W, C]` (TF 'SAME' padding, any stride; a strided
        conv is not dilated). `kernel`/`bias` replace the layer's (as in `apply_at`)."""
        kernel = tf.cast(self.kernel if kernel is None else kernel, x.dtype)
        if strides != 1:
            y = tf.nn.convolution(x, kernel, strides=strides, padding="SAME")
        else:
            y = tf.nn.convolution(x, kernel, padding="SAME", dilations=self.dilation_rate)
        return self._finish(y, bias)

    def call(self, inputs, region):
        index = as_region_index(region)
        index.check_features(inputs, "RegionConv2D inputs")
        if inputs.shape[-1] is not None and inputs.shape[-1] != self.kernel.shape[2]:
            raise ValueError(
                f"RegionConv2D was built for {self.kernel.shape[2]} input channels; got inputs {inputs.shape}."
            )
        return index.scatter(self.apply_at(inputs, index))

    def compute_output_shape(self, input_shape, region_shape=None):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation) if self.activation else None,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


