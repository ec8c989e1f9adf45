"""Stage-map pictures: image | labels | deciding stage, written as PNG."""

import numpy as np
import tensorflow as tf

# Deciding stage 1, 2, 3: green (easy), orange, red (hard).
STAGE_COLOURS = np.array([[0, 0, 0], [46, 160, 67], [240, 160, 40], [215, 40, 40]], np.uint8)


def palette(num_classes, void=True):
    """A fixed, distinct RGB palette `[K (+1 void), 3]` uint8; void is grey."""
    rng = np.random.default_rng(1234)
    base = np.array(
        [[128, 64, 128], [70, 130, 180], [220, 20, 60], [250, 170, 30], [107, 142, 35], [0, 0, 142],
         [153, 153, 153], [255, 255, 0], [190, 153, 153], [0, 80, 100], [119, 11, 32], [152, 251, 152]],
        np.uint8,
    )
    extra = rng.integers(0, 256, size=(max(0, num_classes - len(base)), 3)).astype(np.uint8)
    colours = np.concatenate([base, extra])[:num_classes]
    return np.concatenate([colours, [[96, 96, 96]]]).astype(np.uint8) if void else colours


def colourize(labels, colours):
    """int `[H, W]` → uint8 `[H, W, 3]`; labels outside the palette are black."""
    labels = np.asarray(labels).astype(np.int64)
    out = np.zeros((*labels.shape, 3), np.uint8)
    ok = (labels >= 0) & (labels < len(colours))
    out[ok] = colours[labels[ok]]
    return out


def stage_panel(image, labels, stage, num_classes, truth=None):
    """One PNG-ready panel: image | [truth] | labels | deciding stage, `[H, W', 3]` uint8."""
    colours = palette(num_classes)
    parts = [np.asarray(image, np.uint8)]
    if truth is not None:
        parts.append(colourize(truth, colours))
    parts += [colourize(labels, colours), colourize(stage, STAGE_COLOURS)]
    gap = np.full((parts[0].shape[0], 4, 3), 255, np.uint8)
    row = []
    for p in parts:
        row += [p, gap]
    return np.concatenate(row[:-1], axis=1)


def write_png(path, array):
    """Write a uint8 `[H, W, 3]` array as PNG (TensorFlow's encoder, no extra dependency)."""
    tf.io.write_file(str(path), tf.io.encode_png(np.asarray(array, np.uint8)))
