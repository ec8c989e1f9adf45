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


def forward_region(region, probs, rho):
    """Pixels of `region` whose max probability is below ρ (all of them when ρ >= 1).

    Args:
        region: bool `[B, h, w]`; probs: float `[B, h, w, K]`; rho: float scalar.
    Returns:
        bool `[B, h, w]`.

    ρ = 1 forwards every pixel even where a float32 softmax saturates to exactly 1.0,
    so that ρ = 1 is the deeply-supervised network, as in the paper.
    """
    rho = tf.cast(rho, tf.float32)
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

    Args:
        num_classes: int K.
        hidden_channels: int, width of the first conv (of each ASPP branch). Defaults to 128.
        kernel_size: odd int or pair for the first conv. Defaults to 3.
        dilation_rate: int or pair for the first conv. Defaults to 1.
        aspp_rates: None (the plain head) or a sequence of dilation rates, one 3×3 branch
            each (DeepLab-v2: 6, 12, 18, 24 at output stride 8).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float `[B, h, w, C]`, the stage's features.
        region: bool `[B, h, w]` or `RegionIndex`: the pixels this stage computes.
        rho: float scalar in (0, 1], or None (= 1, forward everything).
        return_logits: bool; also return the logits (for the loss).

    Returns:
        `(probs, next_region)`: probs float32 `[B, h, w, K]`, zeros outside the
        region; next_region bool `[B, h, w]` = region ∧ (max probs < ρ).
        With `return_logits=True`, `(probs, next_region, logits)`, logits float32
        `[B, h, w, K]`, zeros outside the region.
    """

    def __init__(self, num_classes, hidden_channels=128, kernel_size=3, dilation_rate=1, aspp_rates=None,
                 **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}.")
        self.num_classes = int(num_classes)
        self.hidden_channels = int(hidden_channels)
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.aspp_rates = None if aspp_rates is None else self._check_rates(aspp_rates)
        def branch(prefix, size, rate):
            return (
                RegionConv2D(  # no bias before the LayerNorm, which cancels it
                    hidden_channels, size, dilation_rate=rate, use_bias=False, name=f"{prefix}conv"
                ),
                keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}norm"),
                RegionConv2D(num_classes, 1, name=f"{prefix}classifier"),
            )

        if self.aspp_rates is None:  # attribute names = the weight paths of every saved plain head
            self.conv, self.norm, self.classifier = branch("", kernel_size, dilation_rate)
        else:
            convs, norms, classifiers = zip(*[branch(f"aspp{i}_", 3, r) for i, r in enumerate(self.aspp_rates)])
            self.aspp_convs, self.aspp_norms, self.aspp_classifiers = list(convs), list(norms), list(classifiers)

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
            classifier.build((None, None, None, self.hidden_channels))

    def call(self, inputs, region, rho=None, return_logits=False, training=None):
        index = as_region_index(region)
        index.check_features(inputs, "StageHead inputs")
        logits = []
        for conv, norm, classifier in self.branches():
            t = tf.nn.relu(norm(conv.apply_at(inputs, index)))
            logits.append(tf.cast(classifier.apply_compact(t), tf.float32))
        logits = tf.add_n(logits)  # ASPP: the branches' logits summed (DeepLab-v2)
        probs = tf.nn.softmax(logits, axis=-1)
        probs = index.scatter(probs)
        next_region = forward_region(index.region, probs, 1.0 if rho is None else rho)
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
            }
        )
        return config
