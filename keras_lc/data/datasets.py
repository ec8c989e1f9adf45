"""Directory datasets as tf.data, for three layouts.

- "camvid": `<root>/<split>/images/*.png`, `<root>/<split>/labels/*.png` (same names; 8-bit
  class ids) and `<root>/classes.json` (`num_classes`, `ignore_index`, `names`, `palette_rgb`).
- "voc": PASCAL VOC 2012 (+ SBD): `<root>/JPEGImages/<id>.jpg`, labels in
  `<root>/SegmentationClassAug/<id>.png` (SBD-augmented, class ids) if present, else
  `<root>/SegmentationClass/<id>.png` (VOC palette PNGs), ids from
  `<root>/ImageSets/Segmentation/<split>.txt`; 21 classes, void 255.
- "cityscapes": `<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` and
  `<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png`; label ids mapped to the 19
  train ids, everything else void 255.
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_lc.data.augment import photometric_jitter, random_scale_crop_flip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MAGIC = {b"\x89PNG": "png", b"\xff\xd8\xff": "jpeg", b"BM": "bmp"}


LAYOUTS = ("camvid", "voc", "cityscapes")

VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
CITYSCAPES_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                    "bicycle"]
# Cityscapes label id -> train id (cityscapesScripts' labels.py); every other id is void (255).
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def voc_colormap():
    """The PASCAL VOC palette `[256, 3]` (index i's colour; 255 = void is (224, 224, 192))."""
    cmap = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def read_info(root, layout="camvid"):
    """Classes of a dataset folder: `num_classes`, `ignore_class`, `names`, `palette_rgb`."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown dataset layout {layout!r}; choose one of {LAYOUTS}.")
    if not Path(root).is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if layout == "camvid":
        return read_classes(root)
    if layout == "voc":
        cmap = voc_colormap()
        return {"num_classes": 21, "ignore_class": 255, "names": VOC_NAMES,
                "palette_rgb": cmap[:21].tolist() + [cmap[255].tolist()]}
    palette = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
               [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
               [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32], [0, 0, 0]]
    return {"num_classes": 19, "ignore_class": 255, "names": CITYSCAPES_NAMES, "palette_rgb": palette}


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
    # the file's key is the dataset's own ("ignore_index" in CamVid's classes.json); ours is ignore_class
    info["ignore_class"] = info.get("ignore_class", info.get("ignore_index"))
    info["names"] = list(info.get("names", [str(i) for i in range(info["num_classes"])]))[: info["num_classes"]]
    return info


def _check_readable(path):
    try:
        head = path.read_bytes()[:4]
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not any(head.startswith(m) for m in _MAGIC):
        raise ValueError(f"{path} is not a PNG/JPEG/BMP image (unreadable or corrupt).")


def _voc_pairs(root, split):
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        raise ValueError(f"missing split list {ids_file} (VOC layout: ImageSets/Segmentation/<split>.txt).")
    ids = [line.strip().split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"the split list {ids_file} is empty.")
    label_dir = root / "SegmentationClassAug"
    if not label_dir.is_dir():
        label_dir = root / "SegmentationClass"
    images, labels = [], []
    for i in ids:
        image, label = root / "JPEGImages" / f"{i}.jpg", label_dir / f"{i}.png"
        for p in (image, label):
            if not p.is_file():
                raise ValueError(f"{p} listed in {ids_file.name} is missing.")
        images.append(image)
        labels.append(label)
    return images, labels


def _cityscapes_pairs(root, split):
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise ValueError(f"missing folder {image_dir} (Cityscapes layout: leftImg8bit/<split>/<city>/).")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise ValueError(f"no images in {image_dir}/*/")
    labels = []
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise ValueError(f"no label for {image.name}: {label} is missing.")
        labels.append(label)
    return images, labels


def list_pairs(root, split, layout="camvid"):
    """Sorted (image, label) path pairs of a split, with clear errors for a broken folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if layout in ("voc", "cityscapes"):
        images, labels = (_voc_pairs if layout == "voc" else _cityscapes_pairs)(root, split)
        for p in [*images, *labels]:
            _check_readable(p)
        return [str(p) for p in images], [str(p) for p in labels]
    images_dir, labels_dir = root / split / "images", root / split / "labels"
    if not (root / split).is_dir():
        found = sorted(d.name for d in root.iterdir() if (d / "images").is_dir() and (d / "labels").is_dir())
        raise ValueError(f"no split {split!r} in {root}; the splits found there: {', '.join(found) or 'none'}.")
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


def _voc_label(data):
    """VOC labels: class-id PNGs (SBD-aug) as they are; palette PNGs (TF expands them to RGB) mapped back."""
    raw = tf.io.decode_png(data, channels=0)
    cmap = voc_colormap().astype(np.int32)
    keys = tf.constant(cmap[:, 0] * 65536 + cmap[:, 1] * 256 + cmap[:, 2])
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.range(256)), default_value=255)

    def from_rgb():
        rgb = tf.cast(raw[..., :3], tf.int32)
        return table.lookup(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])

    return tf.cond(tf.shape(raw)[-1] >= 3, from_rgb, lambda: tf.cast(raw[..., 0], tf.int32))


def decode_label(data):
    """Class ids `[H, W]` int32 from an encoded single-channel label image, at its bit depth.

    `tf.io.decode_image` would rescale a 16-bit PNG to 8 bits (ids 0..255 become 0); here PNGs are
    decoded as 16 bits and 8-bit ones divided back by 257 (TF's exact 8→16-bit widening).
    """
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")

    def png():
        depth = tf.io.decode_raw(tf.strings.substr(data, 24, 1), tf.uint8)[0]  # the IHDR bit depth
        raw = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16)[..., 0], tf.int32)
        return tf.where(tf.equal(depth, 16), raw, raw // 257)

    def other():
        return tf.cast(tf.io.decode_image(data, channels=1, expand_animations=False)[..., 0], tf.int32)

    return tf.cond(is_png, png, other)


def decode_example(image_path, label_path, num_classes, ignore_class, layout="camvid"):
    """Read one (image uint8 `[H, W, 3]`, label int32 `[H, W]`) pair, checking the label values."""
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
    if layout == "voc":
        label = _voc_label(tf.io.read_file(label_path))
    else:
        label = decode_label(tf.io.read_file(label_path))
        if layout == "cityscapes":
            lut = np.full(256, 255, np.int32)
            for k, v in CITYSCAPES_TRAIN_IDS.items():
                lut[k] = v
            label = tf.gather(tf.constant(lut), label)
    bad = label >= num_classes
    if ignore_class is not None:
        bad = tf.logical_and(bad, tf.not_equal(label, ignore_class))
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["keras_lc: labels out of range in", label_path, "max value", tf.reduce_max(label),
         f"(classes 0..{num_classes - 1}, void {ignore_class})"],
    )
    same = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label))),
        ["keras_lc: image and label sizes differ for", image_path, "image", tf.shape(image), "label",
         tf.shape(label)],
    )
    with tf.control_dependencies([check, same]):
        return tf.identity(image), tf.identity(label)


def directory_dataset(root, split, batch_size=8, training=False, crop_size=(256, 256), scale_range=(0.5, 2.0),
                      jitter=True, cache=True, seed=0, repeat=False, limit=None, layout="camvid"):
    """A split of a dataset folder as `tf.data`: `(image uint8 [B,H,W,3], label int32 [B,H,W])`.

    `layout` is "camvid", "voc" or "cityscapes" (see the module docstring).

    Training: random scale in `scale_range`, random crop of `crop_size` with padding
    whose labels are the ignore index, horizontal flip, mild photometric jitter;
    parallel decoding, decoded frames cached in memory, prefetch. Validation: full
    frames, deterministic.

    Raises ValueError for a missing/empty folder, image/label count or name mismatch,
    an unreadable file (named); label values outside the classes (other than void)
    stop the pipeline with an error naming the file.
    """
    info = read_info(root, layout)
    k, ignore_class = info["num_classes"], info["ignore_class"]
    images, labels = list_pairs(root, split, layout)
    if limit:
        images, labels = images[:limit], labels[:limit]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda a, b: decode_example(a, b, k, ignore_class, layout), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        fill = 255 if ignore_class is None else ignore_class

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


# `--class-weights` modes: the power applied to the median-frequency weights.
CLASS_WEIGHT_POWERS = {"median": 1.0, "median-sqrt": 0.5}


def median_frequency_weights(info, power=1.0):
    """Class weights from classes.json (`segnet_class_weighting_median_freq`), or None.

    `power=0.5` gives their square roots, a milder balance (on CamVid the weights' range
    shrinks from 68x to 8x): what `--class-weights median-sqrt` trains with.
    Returns a list of K floats rounded to 6 decimals (they are stored in the model's config).
    """
    w = info.get("segnet_class_weighting_median_freq")
    return None if w is None else [round(float(v) ** power, 6) for v in np.asarray(w, np.float32)]
