"""Joint image + label augmentation for training.

Written with tf.image ops rather than Keras' augmentation layers because the crop must
pad *labels* with the ignore index (Keras pads masks with 0, a real class).
"""

import tensorflow as tf


def random_scale_crop_flip(image, label, crop_size=(256, 256), scale_range=(0.5, 2.0), ignore_class=255):
    """Random scale, pad-if-needed (labels padded with `ignore_class`), random crop, random h-flip.

    Args:
        image: uint8 `[H, W, 3]`; label: int `[H, W]`.
    Returns:
        `(image uint8 [ch, cw, 3], label int32 [ch, cw])`.
    """
    ch, cw = crop_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.random.uniform([], scale_range[0], scale_range[1])
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(tf.cast(label, tf.int32)[..., None], size, method="nearest")[..., 0]
    pad_h, pad_w = tf.maximum(ch - size[0], 0), tf.maximum(cw - size[1], 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=127.5)
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=ignore_class)
    both = tf.concat([image, tf.cast(label, tf.float32)[..., None]], axis=-1)
    both = tf.image.random_crop(both, [ch, cw, 4])
    both = tf.image.random_flip_left_right(both)
    image = tf.cast(tf.clip_by_value(tf.round(both[..., :3]), 0, 255), tf.uint8)
    return image, tf.cast(tf.round(both[..., 3]), tf.int32)


def photometric_jitter(image, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02):
    """Mild random brightness / contrast / saturation / hue on a uint8 image."""
    x = tf.image.convert_image_dtype(image, tf.float32)
    x = tf.image.random_brightness(x, brightness)
    x = tf.image.random_contrast(x, 1 - contrast, 1 + contrast)
    x = tf.image.random_saturation(x, 1 - saturation, 1 + saturation)
    x = tf.image.random_hue(x, hue)
    return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8, saturate=True)
