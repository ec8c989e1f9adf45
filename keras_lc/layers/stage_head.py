"""StageHead: a stage's classifier (two convs + softmax) and its forwarding decision."""

import keras
import tensorflow as tf

from keras_lc.layers.region_conv import RegionConv2D
from keras_lc.layers.region_index import as_region_index


def check_rho(rho):
    """Validate a Python ρ: a number in (0, 1]. Returns it as float."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"rho must be a number in (0, 1]; got {rho!r}.") from None
    if not (0.0 < value <= 1.0):
        raise ValueError(f"rho must be in (0, 1]; got {value}.")
    return value


RHO_ERROR = "keras_lc: rho must be in (0, 1]"


def check_rho_tensor(rho):
    """Validate a ρ tensor (a per-call or served ρ): a number in (0, 1], NaN refused.

    Returns float32 `rho`. A known value is checked at once (ValueError); otherwise a graph
    assertion fails the call with `RHO_ERROR` in its message.
    """
    if tf.is_tensor(rho) and not (rho.dtype.is_floating or rho.dtype.is_integer):
        raise ValueError(f"rho must be a number in (0, 1]; got a {rho.dtype.name} tensor.")
    if isinstance(rho, (str, bytes)):
        raise ValueError(f"rho must be a number in (0, 1]; got {rho!r}.")
    rho = tf.cast(rho, tf.float32)
    if tf.executing_eagerly() and rho.shape.rank == 0:
        check_rho(float(rho))
        return rho
    ok = tf.reduce_all(tf.logical_and(rho > 0.0, rho <= 1.0))  # False for NaN
    check = tf.debugging.Assert(ok, [f"{RHO_ERROR}; got", rho])
    with tf.control_dependencies([check]):
        return tf.identity(rho)


def forward_region(region, probs, rho, confidence=None):
    """Pixels of `region` whose max probability is below ρ (all of them when ρ >= 1).

    Args:
        region: bool `[B, h, w]`; probs: float `[B, h, w, K]` (or None with `confidence`);
        rho: float scalar; confidence: optional float `[B, h, w]` replacing `max(probs)` (the
        decoder head's: the least confident of a cell's sub-pixels).
    Returns:
        bool `[B, h, w]`.

    ρ = 1 forwards every pixel even where a float32 softmax saturates to exactly 1.0,
    so that ρ = 1 is the deeply-supervised network, as in the paper.
    """
    rho = tf.cast(rho, tf.float32)
    if confidence is None:
        confidence = tf.reduce_max(tf.cast(probs, tf.float32), axis=-1)
    return tf.logical_and(region, tf.logical_or(confidence < rho, rho >= 1.0))


@keras.saving.register_keras_serializable(package="keras_lc")
class StageHead(keras.layers.Layer):
    """Two region convolutions and a softmax, then the decision of what to forward.

    `conv(k×k) → LayerNorm → ReLU → conv(1×1) → softmax` computed only in the region;
    the softmax and the ρ test run in float32 whatever the compute dtype.
    With `aspp_rates`, DeepLab-v2's atrous spatial pyramid pooling head: one such
    branch per rate (3×3 conv at that dilation), their logits summed, all on the region
    (zero padding outside it, like every region conv).
    With `decoder_channels`, a DeepLabV3+-style decoder on low-level features `upsample` times
    finer than the stage grid: each region cell predicts its `upsample × upsample` sub-pixels
    from its hidden features and the low-level features there (`conv1×1(hidden) +
    conv1×1(low) → LayerNorm → ReLU → conv1×1 → softmax` per sub-pixel, i.e. 1×1 convs on the
    concatenation of the nearest-upsampled hidden map and the low-level map). A cell reads only
    its own sub-pixels, so the region stays exact; it is decided when its least confident
    sub-pixel reaches ρ.

    Args:
        num_classes: int K.
        hidden_channels: int, width of the first conv (of each ASPP branch). Defaults to 128.
        kernel_size: odd int or pair for the first conv. Defaults to 3.
        dilation_rate: int or pair for the first conv. Defaults to 1.
        aspp_rates: None (the plain head) or a sequence of dilation rates, one 3×3 branch
            each (DeepLab-v2: 6, 12, 18, 24 at output stride 8).
        decoder_channels: None (no decoder) or int, the width of the sub-pixel decoder.
        upsample: int, how much finer the low-level features (and the output) are than the
            stage grid (4 for stride-4 features under a stride-16 grid). Only with a decoder.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float `[B, h, w, C]`, the stage's features.
        region: bool `[B, h, w]` or `RegionIndex`: the pixels this stage computes.
        rho: float scalar in (0, 1], or None (= 1, forward everything).
        return_logits: bool; also return the logits (for the loss).
        low_level: decoder only: float `[B, H', W', C']`, H' ≤ upsample·h (stage 1's stride-4
            features).

    Returns:
        `(probs, next_region)`: probs float32 `[B, h, w, K]` (decoder: `[B, H', W', K]`), zeros
        outside the region's cells; next_region bool `[B, h, w]` = region ∧ (max probs < ρ).
        With `return_logits=True`, `(probs, next_region, logits)`, logits float32 of the probs'
        shape, zeros outside the region.
    """

    def __init__(self, num_classes, hidden_channels=128, kernel_size=3, dilation_rate=1, aspp_rates=None,
                 decoder_channels=None, upsample=1, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}.")
        self.num_classes = int(num_classes)
        self.hidden_channels = int(hidden_channels)
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.aspp_rates = None if aspp_rates is None else self._check_rates(aspp_rates)
        self.decoder_channels = None if decoder_channels is None else int(decoder_channels)
        self.upsample = int(upsample)
        if self.decoder_channels is not None and (self.decoder_channels < 1 or self.upsample < 1):
            raise ValueError(f"decoder_channels and upsample must be positive; got {decoder_channels!r}, {upsample!r}.")
        if self.decoder_channels is None and self.upsample != 1:
            raise ValueError("upsample needs a decoder (decoder_channels).")
        if self.decoder_channels is not None and self.aspp_rates is not None:
            raise ValueError("A head has ASPP or a decoder, not both.")

        def branch(prefix, size, rate):
            return (
                RegionConv2D(  # no bias before the LayerNorm, which cancels it
                    hidden_channels, size, dilation_rate=rate, use_bias=False, name=f"{prefix}conv"
                ),
                keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}norm"),
                RegionConv2D(num_classes, 1, name=f"{prefix}classifier"),
            )

        if self.decoder_channels is not None:  # no stage-grid classifier: the decoder classifies
            self.conv, self.norm, _ = branch("", kernel_size, dilation_rate)
            self.classifier = None
        elif self.aspp_rates is None:  # attribute names = the weight paths of every saved plain head
            self.conv, self.norm, self.classifier = branch("", kernel_size, dilation_rate)
        else:
            convs, norms, classifiers = zip(*[branch(f"aspp{i}_", 3, r) for i, r in enumerate(self.aspp_rates)])
            self.aspp_convs, self.aspp_norms, self.aspp_classifiers = list(convs), list(norms), list(classifiers)
        if self.decoder_channels is not None:
            self.decoder_hidden = RegionConv2D(self.decoder_channels, 1, name="decoder_hidden")
            self.decoder_low = RegionConv2D(self.decoder_channels, 1, use_bias=False, name="decoder_low")
            # per sub-pixel, like the head's own norm: the stride-4 features' scale is the backbone's
            self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_norm")
            self.decoder_classifier = RegionConv2D(num_classes, 1, name="decoder_classifier")

    def branches(self):
        """`[(conv, norm, classifier), ...]`: one for the plain head, one per rate for ASPP.

        A method, not a property: Keras' saving walks a layer's attributes, and a list-valued
        property would file the weights a second time under its own name (and warn on older files)."""
        if self.aspp_rates is None:
            return [(self.conv, self.norm, self.classifier)]
        return list(zip(self.aspp_convs, self.aspp_norms, self.aspp_classifiers))

    @staticmethod
    def _check_rates(rates):
        try:
            rates = tuple(int(r) for r in rates)
        except (TypeError, ValueError):
            raise ValueError(f"aspp_rates must be positive integers like (6, 12, 18, 24); got {rates!r}.") from None
        if not rates or min(rates) < 1:
            raise ValueError(f"aspp_rates must be positive integers like (6, 12, 18, 24); got {rates!r}.")
        return rates

    def build(self, input_shape):
        for conv, norm, classifier in self.branches():
            conv.build(input_shape)
            norm.build((None, self.hidden_channels))
            if self.decoder_channels is None:
                classifier.build((None, None, None, self.hidden_channels))
        if self.decoder_channels is not None:
            self.decoder_hidden.build((None, None, None, self.hidden_channels))
            self.decoder_norm.build((None, self.decoder_channels))
            self.decoder_classifier.build((None, None, None, self.decoder_channels))
            # decoder_low's input width is the low-level features': built on the first call

    def _decode(self, hidden, low_level, index):
        """Sub-pixel logits of the region's cells: compact hidden (`[N, C]`, or a map for a dense
        index) and the low-level map `[B, H', W', C']` -> compact `[..., f², K]` (f = upsample,
        sub-pixel (dy, dx) at position dy·f + dx, as `tf.nn.space_to_depth` orders them)."""
        f = self.upsample
        if not self.decoder_low.built:
            self.decoder_low.build(low_level.shape)
        pad_h = f * index.height - tf.shape(low_level)[1]
        pad_w = f * index.width - tf.shape(low_level)[2]
        check = tf.debugging.assert_non_negative(
            tf.stack([pad_h, pad_w]), message="StageHead: low_level is larger than upsample x the stage grid")
        with tf.control_dependencies([check]):
            low = tf.pad(low_level, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        low = index.gather(tf.nn.space_to_depth(low, f))  # [..., f²·C']: each cell's sub-pixels
        channels = low_level.shape[-1]
        lead = tf.shape(hidden)[:-1]
        low_rows = tf.reshape(tf.cast(low, hidden.dtype), [-1, channels])  # [(…)·f², C']
        a = tf.reshape(self.decoder_hidden.apply_compact(tf.reshape(hidden, [-1, self.hidden_channels])),
                       [-1, 1, self.decoder_channels])
        b = tf.reshape(self.decoder_low.apply_compact(low_rows), [-1, f * f, self.decoder_channels])
        u = tf.nn.relu(self.decoder_norm(tf.reshape(a + b, [-1, self.decoder_channels])))
        logits = tf.cast(self.decoder_classifier.apply_compact(u), tf.float32)
        return tf.reshape(logits, tf.concat([lead, [f * f, self.num_classes]], axis=0))

    def _to_map(self, compact, index, like):
        """Compact sub-pixel values `[..., f², K]` -> `[B, H', W', K]` (the low-level map's size), zeros
        outside the region's cells."""
        f, k = self.upsample, self.num_classes
        cells = index.scatter(tf.reshape(compact, tf.concat([tf.shape(compact)[:-2], [f * f * k]], axis=0)))
        fine = tf.nn.depth_to_space(cells, f)
        return fine[:, : tf.shape(like)[1], : tf.shape(like)[2]]

    def call(self, inputs, region, rho=None, return_logits=False, training=None, low_level=None):
        index = as_region_index(region)
        index.check_features(inputs, "StageHead inputs")
        rho = 1.0 if rho is None else rho
        if self.decoder_channels is not None:
            if low_level is None:
                raise ValueError("A decoder head needs low_level features (stage 1's stride-4 map).")
            conv, norm, _ = self.branches()[0]
            hidden = tf.nn.relu(norm(conv.apply_at(inputs, index)))
            logits = self._decode(hidden, low_level, index)  # [..., f², K]
            probs = tf.nn.softmax(logits, axis=-1)
            confidence = index.scatter(tf.reduce_min(tf.reduce_max(probs, axis=-1), axis=-1, keepdims=True))
            next_region = forward_region(index.region, None, rho, confidence=confidence[..., 0])
            probs = self._to_map(probs, index, low_level)
            if return_logits:
                return probs, next_region, self._to_map(logits, index, low_level)
            return probs, next_region
        logits = []
        for conv, norm, classifier in self.branches():
            t = tf.nn.relu(norm(conv.apply_at(inputs, index)))
            logits.append(tf.cast(classifier.apply_compact(t), tf.float32))
        logits = tf.add_n(logits)  # ASPP: the branches' logits summed (DeepLab-v2)
        probs = tf.nn.softmax(logits, axis=-1)
        probs = index.scatter(probs)
        next_region = forward_region(index.region, probs, rho)
        if return_logits:
            return probs, next_region, index.scatter(logits)
        return probs, next_region

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "hidden_channels": self.hidden_channels,
                "kernel_size": self.kernel_size,
                "dilation_rate": self.dilation_rate,
                "aspp_rates": None if self.aspp_rates is None else list(self.aspp_rates),
                "decoder_channels": self.decoder_channels,
                "upsample": self.upsample,
            }
        )
        return config
