"""Pick a dataset by name: the procedural scenes (no files needed) or a dataset folder.

What `keras-lc train / evaluate / analyze / predict / visualize` read, as library calls: `load_split` gives
batches (`tf.data` or the synthetic pipeline), `labelled_images` gives named `(image, truth)` pairs.
"""

from pathlib import Path

SYNTHETIC_VAL_SEED_OFFSET = 1000  # validation scenes: seed + 1000 (never the training scenes)


def _folder(data, data_dir):
    if not data_dir:
        raise ValueError(f"--data {data} needs --data-dir (a dataset folder)")
    return data_dir


def load_split(data="synthetic", split="train", data_dir=None, batch_size=8, training=False, crop=256, seed=0,
               num_images=64, image_size=96, num_classes=5):
    """Batches `(images uint8 [B, H, W, 3], labels int32 [B, H, W])` of one split.

    Args:
        data: "synthetic" or a folder layout ("camvid", "voc", "cityscapes").
        split: a split folder of `data_dir` ("train", "val", "test", ...); synthetic: "train" draws
            the training scenes (seed), any other split the validation scenes (seed + 1000).
        training: folders: random scale, `crop`×`crop` crops, flips, shuffling; synthetic: shuffling.
        num_images, image_size, num_classes: synthetic scenes only.
    """
    if data != "synthetic":
        from keras_lc.data.datasets import directory_dataset

        return directory_dataset(_folder(data, data_dir), split, batch_size, training=training,
                                 crop_size=(crop, crop), seed=seed, layout=data)
    from keras_lc.data.synthetic import synthetic

    seed = seed if split == "train" else seed + SYNTHETIC_VAL_SEED_OFFSET
    return synthetic(num_images, image_size, image_size, num_classes, seed=seed, batch_size=batch_size,
                     shuffle=training)


def labelled_images(data="synthetic", split="val", data_dir=None, num_images=8, image_size=96, num_classes=5,
                    seed=0):
    """`[(name, image uint8 [H, W, 3], truth int32 [H, W]), ...]`: the first `num_images` of a split
    (synthetic: validation scenes, seed + 1000)."""
    if data != "synthetic":
        from keras_lc.data.datasets import decode_example, list_pairs, read_info

        root = _folder(data, data_dir)
        info = read_info(root, data)
        images, labels = list_pairs(root, split, data)
        items = []
        for ip, lp in list(zip(images, labels))[:num_images]:
            image, label = decode_example(ip, lp, info["num_classes"], info["ignore_class"], data)
            items.append((Path(ip).stem, image.numpy(), label.numpy()))
        return items
    from keras_lc.data.synthetic import synthetic_arrays

    ims, lbs = synthetic_arrays(num_images, image_size, image_size, num_classes, seed=seed + SYNTHETIC_VAL_SEED_OFFSET)
    return [(f"synthetic_{i:03d}", ims[i], lbs[i]) for i in range(len(ims))]
