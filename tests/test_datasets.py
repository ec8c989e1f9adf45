import json
import re

import numpy as np
import pytest
import tensorflow as tf

from keras_lc.data import directory_dataset, list_pairs, random_scale_crop_flip, read_classes


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(array).numpy())


@pytest.fixture
def camvid_like(tmp_path):
    """A tiny CamVid-layout folder: 3 train and 2 val frames of 24x32, 4 classes, void 4."""
    rng = np.random.default_rng(0)
    (tmp_path / "classes.json").write_text(json.dumps(
        {"num_classes": 4, "ignore_index": 4, "names": ["a", "b", "c", "d", "void"]}))
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _write(tmp_path / split / "images" / f"f{i}.png", rng.integers(0, 256, (24, 32, 3)).astype(np.uint8))
            _write(tmp_path / split / "labels" / f"f{i}.png", rng.integers(0, 5, (24, 32, 1)).astype(np.uint8))
    return tmp_path


def test_reads_validation_split_exactly(camvid_like):
    ds = directory_dataset(camvid_like, "val", batch_size=2)
    images, labels = next(iter(ds))
    assert images.shape == (2, 24, 32, 3) and images.dtype == tf.uint8
    assert labels.shape == (2, 24, 32) and labels.dtype == tf.int32
    expected = tf.io.decode_png(tf.io.read_file(str(camvid_like / "val" / "labels" / "f0.png")))[..., 0]
    np.testing.assert_array_equal(labels[0], expected)
    assert read_classes(camvid_like)["names"] == ["a", "b", "c", "d"]


def test_training_pipeline_crops_and_keeps_void(camvid_like):
    ds = directory_dataset(camvid_like, "train", batch_size=2, training=True, crop_size=(40, 40), scale_range=(1, 1))
    images, labels = next(iter(ds))
    assert images.shape == (2, 40, 40, 3) and labels.shape == (2, 40, 40)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    # a 24x32 frame padded to 40x40: at least 40*40-24*32 pixels are void
    assert (labels.numpy() == 4).sum(axis=(1, 2)).min() >= 40 * 40 - 24 * 32


def test_scale_crop_flip_keeps_pairs_aligned():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :10] = 200
    label = np.zeros((20, 20), np.int32)
    label[:, :10] = 1
    tf.random.set_seed(0)
    for _ in range(5):
        im, lb = random_scale_crop_flip(image, label, (16, 16), (0.8, 1.5), ignore_class=9)
        im, lb = im.numpy(), lb.numpy()
        bright = im[..., 0] > 150
        assert np.mean(bright == (lb == 1)) > 0.9  # image and label moved together


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_dir", "dataset folder not found"),
        ("no_labels_dir", "missing folder"),
        ("empty", "no images"),
        ("count", "3 images .* but 2 labels"),
        ("name", "names differ"),
        ("corrupt", "f1.png is not a PNG"),
        ("no_classes", "classes.json"),
    ],
)
def test_clear_errors(camvid_like, breakage, message):
    root = camvid_like
    if breakage == "missing_dir":
        root = camvid_like / "nope"
    elif breakage == "no_labels_dir":
        for p in (camvid_like / "train" / "labels").iterdir():
            p.unlink()
        (camvid_like / "train" / "labels").rmdir()
    elif breakage == "empty":
        for p in (camvid_like / "train" / "images").iterdir():
            p.unlink()
    elif breakage == "count":
        (camvid_like / "train" / "labels" / "f2.png").unlink()
    elif breakage == "name":
        (camvid_like / "train" / "labels" / "f2.png").rename(camvid_like / "train" / "labels" / "g2.png")
    elif breakage == "corrupt":
        (camvid_like / "train" / "images" / "f1.png").write_bytes(b"garbage")
    elif breakage == "no_classes":
        (camvid_like / "classes.json").unlink()
    with pytest.raises(ValueError, match=message):
        directory_dataset(root, "train")


def test_label_out_of_range_names_the_file(camvid_like):
    _write(camvid_like / "val" / "labels" / "f1.png", np.full((24, 32, 1), 7, np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="f1.png"):
        list(directory_dataset(camvid_like, "val", batch_size=1))


def test_list_pairs_sorted(camvid_like):
    images, labels = list_pairs(camvid_like, "train")
    assert [p.split("/")[-1] for p in images] == ["f0.png", "f1.png", "f2.png"]


def test_cli_on_a_camvid_layout_folder(camvid_like, tmp_path, capsys):
    from keras_lc.cli import main

    out = tmp_path / "run"
    main(["train", "--data", "camvid", "--data-dir", str(camvid_like), "--crop", "32", "--batch-size", "2",
          "--initial-epochs", "1", "--cascade-epochs", "1", "--channels", "16", "--out", str(out)])
    main(["evaluate", str(out / "model.keras"), "--data", "camvid", "--data-dir", str(camvid_like),
          "--split", "val", "--json", str(tmp_path / "e.json")])
    text = capsys.readouterr().out
    assert "mIoU" in text and "\na " in text  # class names from classes.json
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["num_images"] == 2 and set(result["per_class_iou"]) == {"a", "b", "c", "d"}


def test_visualize_a_camvid_layout_folder_uses_its_palette(camvid_like, tmp_path):
    from keras_lc import build_model
    from keras_lc.cli import main
    from keras_lc.viz import cascade_panel_array, dataset_palette

    info = {"palette_rgb": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [0, 0, 0]]}
    colours = dataset_palette(info)
    outputs = {"stage": np.ones((2, 2), np.uint8), "labels": np.full((2, 2), 3),
               "stage1": np.eye(4, dtype=np.float32)[[3]].reshape(1, 1, 4).repeat(2, 0).repeat(2, 1),
               "stage2": np.zeros((2, 2, 4), np.float32), "stage3": np.zeros((2, 2, 4), np.float32)}
    tiles = dict(cascade_panel_array(np.zeros((2, 2, 3), np.uint8), outputs, 4, colours=colours))
    assert (tiles["final labels"] == [10, 11, 12]).all()
    model = build_model("tiny", num_classes=4, ignore_class=4, width=8, stem_channels=8, bottleneck_channels=8,
                        head_channels=8)
    model.save(tmp_path / "m.keras")
    main(["visualize", str(tmp_path / "m.keras"), "--data", "camvid", "--data-dir", str(camvid_like),
          "--num-images", "2", "--out", str(tmp_path / "vis")])
    assert sorted(p.name for p in (tmp_path / "vis").glob("*.png")) == ["f0.png", "f1.png"]


def test_voc_layout_palette_and_index_labels(tmp_path):
    from keras_lc.data import voc_colormap

    cmap = voc_colormap()
    assert cmap[1].tolist() == [128, 0, 0] and cmap[255].tolist() == [224, 224, 192]
    rng = np.random.default_rng(0)
    ids = ["2007_000032", "2007_000033"]
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    truth = np.array([[0, 15, 255], [20, 1, 0]], np.uint8)
    for i in ids:
        (tmp_path / "JPEGImages").mkdir(exist_ok=True)
        (tmp_path / "JPEGImages" / f"{i}.jpg").write_bytes(
            tf.io.encode_jpeg(rng.integers(0, 256, (2, 3, 3)).astype(np.uint8)).numpy())
        # a VOC palette PNG decodes to RGB in TensorFlow: write the colours, the reader maps them back
        _write(tmp_path / "SegmentationClass" / f"{i}.png", cmap[truth])
    images, labels = next(iter(directory_dataset(tmp_path, "val", batch_size=2, layout="voc")))
    np.testing.assert_array_equal(labels[0], truth)
    # SBD-augmented labels are plain class-id PNGs, preferred when present
    for i in ids:
        _write(tmp_path / "SegmentationClassAug" / f"{i}.png", truth[..., None])
    images, labels = next(iter(directory_dataset(tmp_path, "val", batch_size=2, layout="voc")))
    np.testing.assert_array_equal(labels[1], truth)
    (tmp_path / "JPEGImages" / f"{ids[1]}.jpg").unlink()
    with pytest.raises(ValueError, match="2007_000033.jpg listed in val.txt is missing"):
        directory_dataset(tmp_path, "val", layout="voc")


def test_cityscapes_layout_maps_train_ids(tmp_path):
    ids = np.array([[7, 8, 26], [0, 33, 4]], np.uint8)
    for city in ("aachen", "bonn"):
        _write(tmp_path / "leftImg8bit" / "val" / city / f"{city}_000000_000019_leftImg8bit.png",
               np.zeros((2, 3, 3), np.uint8))
        _write(tmp_path / "gtFine" / "val" / city / f"{city}_000000_000019_gtFine_labelIds.png", ids[..., None])
    images, labels = next(iter(directory_dataset(tmp_path, "val", batch_size=2, layout="cityscapes")))
    np.testing.assert_array_equal(labels[0], [[0, 1, 13], [255, 18, 255]])
    (tmp_path / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match="no label for bonn_000000_000019_leftImg8bit.png"):
        directory_dataset(tmp_path, "val", layout="cityscapes")
    with pytest.raises(ValueError, match="Unknown dataset layout"):
        directory_dataset(tmp_path, "val", layout="ade20k")


@pytest.mark.parametrize("mode, expected", [("median", [0.5, 1.0, 2.0, 4.0]),
                                            ("median-sqrt", [0.707107, 1.0, 1.414214, 2.0])])
def test_cli_median_class_weights(camvid_like, tmp_path, mode, expected):
    import keras

    from keras_lc.cli import main

    info = json.loads((camvid_like / "classes.json").read_text())
    info["segnet_class_weighting_median_freq"] = [0.5, 1.0, 2.0, 4.0]
    (camvid_like / "classes.json").write_text(json.dumps(info))
    main(["train", "--data", "camvid", "--data-dir", str(camvid_like), "--crop", "32", "--batch-size", "2",
          "--initial-epochs", "1", "--cascade-epochs", "0", "--channels", "8", "--class-weights", mode,
          "--out", str(tmp_path / "run")])
    assert keras.models.load_model(tmp_path / "run" / "model.keras").class_weights == expected


def test_16_bit_label_pngs_keep_their_class_ids(camvid_like):
    from keras_lc.data.datasets import decode_label

    label = np.random.default_rng(1).integers(0, 5, (24, 32, 1)).astype(np.uint16)
    _write(camvid_like / "val" / "labels" / "f0.png", label)  # the same ids, re-encoded as 16 bits
    _, labels = next(iter(directory_dataset(camvid_like, "val", batch_size=2)))
    np.testing.assert_array_equal(labels[0], label[..., 0])
    wide = np.array([[0, 300, 65535]], np.uint16)[..., None]
    np.testing.assert_array_equal(decode_label(tf.io.encode_png(wide)), wide[..., 0])
    jpeg = tf.io.encode_jpeg(np.full((4, 4, 1), 3, np.uint8), quality=100)
    np.testing.assert_array_equal(decode_label(jpeg), np.full((4, 4), 3))


def test_any_split_folder_is_accepted_and_a_missing_one_lists_the_found(camvid_like, tmp_path):
    import shutil

    from keras_lc.cli import main

    shutil.copytree(camvid_like / "val", camvid_like / "test")
    pairs = list_pairs(camvid_like, "test")
    assert len(pairs[0]) == 2
    with pytest.raises(ValueError, match="no split 'holdout'.*found there: test, train, val"):
        list_pairs(camvid_like, "holdout")
    from keras_lc import build_model

    build_model("tiny", num_classes=4, ignore_class=4, width=8, bottleneck_channels=8, head_channels=8,
                stage2_dilations=(2,), stage3_dilations=(2,)).save(tmp_path / "m.keras")
    main(["evaluate", str(tmp_path / "m.keras"), "--data", "camvid", "--data-dir", str(camvid_like),
          "--split", "test", "--json", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text())["split"] == "test"


@pytest.mark.parametrize("bad, message", [("values", r"labels out of range in .*f1.png max value 7"),
                                          ("size", r"image and label sizes differ for .*f1.png")])
def test_evaluate_names_the_bad_label_file_in_one_line(camvid_like, small_model, bad, message, capsys):
    from keras_lc.cli import main

    label = np.full((24, 32, 1), 7, np.uint8) if bad == "values" else np.zeros((20, 32, 1), np.uint8)
    _write(camvid_like / "val" / "labels" / "f1.png", label)
    model = camvid_like / "m.keras"
    small_model.save(model)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(model), "--data", "camvid", "--data-dir", str(camvid_like), "--batch-size", "1"])
    assert re.search(message, str(e.value)) and "\n" not in str(e.value) and "Traceback" not in str(e.value)
