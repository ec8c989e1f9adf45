"""Losses of the layer cascade: sparse softmax cross-entropy over a region's valid pixels."""

import tensorflow as tf


def masked_sparse_categorical_crossentropy_sum(labels, logits, region=None, ignore_class=None, class_weights=None):
    """`(sum of cross-entropy, number of pixels)` over the valid pixels of `region`.

    The parts of the mean, so that under a `tf.distribute` strategy the sum can be
    divided by the global pixel count of the global batch. With `class_weights` [K]
    each pixel counts with its class's weight, in the sum and in the count (the
    weighted mean of PyTorch's `CrossEntropyLoss(weight=...)`).
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.ones_like(labels, tf.bool) if ignore_class is None else tf.not_equal(labels, ignore_class)
    if region is not None:
        valid = tf.logical_and(valid, region)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
    weight = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weight = weight * tf.gather(tf.constant(class_weights, tf.float32), safe)
    return tf.reduce_sum(ce * weight), tf.reduce_sum(weight)


def masked_sparse_categorical_crossentropy(labels, logits, region=None, ignore_class=None, class_weights=None):
    """Mean cross-entropy over the pixels that are in `region` and not `ignore_class`.

    Averaging over valid pixels only (not over all pixels) keeps the loss scale of a
    stage independent of how many pixels reach it, as in Model Garden's
    segmentation loss. A stage that no valid pixel reaches contributes 0.

    Args:
        labels: int `[B, h, w]`.
        logits: float `[B, h, w, K]` (values outside the region are not read).
        region: bool `[B, h, w]` or None (all pixels).
        ignore_class: int or None: label excluded from the loss.
        class_weights: optional sequence of K per-class weights (e.g. median frequency).

    Returns:
        float32 scalar.
    """
    total, count = masked_sparse_categorical_crossentropy_sum(labels, logits, region, ignore_class, class_weights)
    return tf.math.divide_no_nan(total, count)
