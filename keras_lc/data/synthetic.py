"""Procedural segmentation scenes for the demo and the tests (no download, deterministic).

Each image is a textured, colour-graded background (class 0) with objects drawn on
it: large ellipses, boxes, thin "poles" and small dots (classes 1.., cycling through
those shapes). Wide, plain regions are easy; thin structures, small objects and
boundaries are hard, which is what a layer cascade should discover. A one-pixel
band around ellipses is labelled void (`ignore_class = num_classes`), like the
boundaries of PASCAL VOC.
"""

import numpy as np
import tensorflow as tf

SHAPES = ("ellipse", "box", "pole", "dot")
CLASS_NAMES = ("background", "ellipse", "box", "pole", "dot")


def class_names(num_classes):
    """Names of the synthetic classes: background, then the shape of each class."""
    return ["background"] + [f"{SHAPES[(c - 1) % len(SHAPES)]}{'' if c <= len(SHAPES) else (c - 1) // len(SHAPES) + 1}"
                             for c in range(1, num_classes)]


def _scene(rng, height, width, num_classes, palette):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background: a random colour gradient plus smooth and fine noise.
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(height, width)
    image = c0 + (c1 - c0) * (t[..., None] - t.min()) / (np.ptp(t) + 1e-6)
    label = np.zeros((height, width), np.int32)
    void = np.zeros((height, width), bool)
    n_objects = rng.integers(3, 7)
    for _ in range(n_objects):
        c = int(rng.integers(1, num_classes))
        kind = SHAPES[(c - 1) % len(SHAPES)]
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if kind == "ellipse":
            ry, rx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.12, 0.3) * width
            d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            mask = d <= 1.0
            band = (d > 1.0) & (d <= (1 + 1.5 / min(ry, rx)) ** 2)
        elif kind == "box":
            hh, hw = rng.uniform(0.08, 0.22) * height, rng.uniform(0.08, 0.22) * width
            mask = (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)
            band = np.zeros_like(mask)
        elif kind == "pole":
            angle = rng.uniform(0, np.pi)
            thick = rng.uniform(0.8, 2.0)
            dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
            along = np.abs((yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle))
            mask = (dist <= thick) & (along <= rng.uniform(0.2, 0.5) * max(height, width))
            band = np.zeros_like(mask)
        else:  # dot
            r = rng.uniform(1.5, 3.5)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            band = np.zeros_like(mask)
        colour = palette[c] + rng.normal(0, 25, size=3)
        shade = 1.0 + 0.15 * np.sin(xx / rng.uniform(2, 6) + yy / rng.uniform(2, 6))  # class texture
        image[mask] = colour * shade[mask][:, None]
        label[mask] = c
        void[mask] = False
        void |= band & ~mask
    image += rng.normal(0, 8, size=image.shape)
    label[void] = num_classes
    return np.clip(image, 0, 255).astype(np.uint8), label


def synthetic_arrays(num_images=64, height=96, width=96, num_classes=5, seed=0):
    """Numpy version of `synthetic`: `(images uint8 [N,H,W,3], labels int32 [N,H,W])`."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}.")
    if num_images < 1 or height < 8 or width < 8:
        raise ValueError(f"Need num_images >= 1 and images of at least 8x8; got {num_images}, {height}x{width}.")
    # The class colours are part of the task, not of the sample: the same for every seed.
    palette = np.random.default_rng(20170721).uniform(30, 225, size=(num_classes, 3))
    images = np.empty((num_images, height, width, 3), np.uint8)
    labels = np.empty((num_images, height, width), np.int32)
    for i in range(num_images):
        images[i], labels[i] = _scene(np.random.default_rng([seed, i]), height, width, num_classes, palette)
    return images, labels


def synthetic(num_images=64, height=96, width=96, num_classes=5, seed=0, batch_size=None, shuffle=False):
    """A procedural segmentation dataset, deterministic by seed.

    Args:
        num_images: int.
        height, width: image size.
        num_classes: int K >= 2; the void label is K.
        seed: int. Same seed, same images.
        batch_size: optional int; batches the dataset.
        shuffle: bool; reshuffle each epoch (seeded).

    Returns:
        `tf.data.Dataset` of `(image uint8 [H, W, 3], label int32 [H, W])`
        (batched: `[B, H, W, 3]`, `[B, H, W]`).
    """
    images, labels = synthetic_arrays(num_images, height, width, num_classes, seed)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)
    if batch_size:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
