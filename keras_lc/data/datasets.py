"""Directory datasets as tf.data: the CamVid layout (and any folder laid out like it).

Layout: `<root>/<split>/images/*.png` and `<root>/<split>/labels/*.png` with the same
file names; labels are 8-bit class ids. `<root>/classes.json` (optional) gives
`num_classes`, `ignore_index`, `names`, `palette_rgb` and median-frequency weights.
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_lc.data.augment import photometric_jitter, random_scale_crop_flip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"BM": "bmp"}


def read_classes(root):
    """`classes.json` of a dataset folder as a dict (ValueError if missing or malformed)."""
    if not Path(root).is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: a dataset folder needs classes.json (num_classes, ignore_index, names).")
    try:
        info = json.loads(path.read_text())
        info["num_classes"] = int(info["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid classes.json: {e}") from None
    info.setdefault("ignore_index", None)
    info["names"] = list(info.get("names", [str(i) for i in range(info["num_classes"])]))[: info["num_classes"]]
    return info


def _check_readable(path):
    try:
        head = path.read_bytes()[:4]
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not any(head.startswith(m) for m in _MAGIC):
        raise ValueError(f"{path} is not a PNG/JPEG/BMP image (unreadable or corrupt).")


def list_pairs(root, split):
    """Sorted (image, label) path pairs of a split, with clear errors for a broken folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    images_dir, labels_dir = root / split / "images", root / split / "labels"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise ValueError(f"missing folder {d} (expected <root>/<split>/images and <root>/<split>/labels).")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    labels = sorted(p for p in labels_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images in {images_dir}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images in {images_dir} but {len(labels)} labels in {labels_dir}.")
    for a, b in zip(images, labels):
        if a.stem != b.stem:
            raise ValueError(f"image and label names differ: {a.name} vs {b.name} (pairs are matched by name).")
    for p in [*images, *labels]:
        _check_readable(p)
    return [str(p) for p in images], [str(p) for p in labels]


def _decode(image_path, label_path, num_classes, ignore):
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
    label = tf.io.decode_image(tf.io.read_file(label_path), channels=1, expand_animations=False)[..., 0]
    label = tf.cast(label, tf.int32)
    bad = label >= num_classes
    if ignore is not None:
        bad = tf.logical_and(bad, tf.not_equal(label, ignore))
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["keras_lc: labels out of range in", label_path, "max value", tf.reduce_max(label),
         f"(classes 0..{num_classes - 1}, void {ignore})"],
    )
    same = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label))),
        ["keras_lc: image and label sizes differ for", image_path, tf.shape(image), tf.shape(label)],
    )
    with tf.control_dependencies([check, same]):
        return tf.identity(image), tf.identity(label)


def directory_dataset(root, split, batch_size=8, training=False, crop_size=(256, 256), scale_range=(0.5, 2.0),
                      jitter=True, cache=True, seed=0, repeat=False, limit=None):
    """A CamVid-layout split as `tf.data`: `(image uint8 [B,H,W,3], label int32 [B,H,W])`.

    Training: random scale in `scale_range`, random crop of `crop_size` with padding
    whose labels are the ignore index, horizontal flip, mild photometric jitter;
    parallel decoding, decoded frames cached in memory, prefetch. Validation: full
    frames, deterministic.

    Raises ValueError for a missing/empty folder, image/label count or name mismatch,
    an unreadable file (named); label values outside the classes (other than void)
    stop the pipeline with an error naming the file.
    """
    info = read_classes(root)
    k, ignore = info["num_classes"], info["ignore_index"]
    images, labels = list_pairs(root, split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda a, b: _decode(a, b, k, ignore), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        fill = 255 if ignore is None else ignore

        def augment(image, label):
            image, label = random_scale_crop_flip(image, label, crop_size, scale_range, fill)
            if jitter:
                image = photometric_jitter(image)
            return image, label

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def median_frequency_weights(info):
    """Class weights from classes.json (`segnet_class_weighting_median_freq`), or None."""
    w = info.get("segnet_class_weighting_median_freq")
    return None if w is None else np.asarray(w, np.float32)
