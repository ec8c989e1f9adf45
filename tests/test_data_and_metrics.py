import numpy as np
import pytest
import tensorflow as tf

from keras_lc.data import class_names, synthetic, synthetic_arrays
from keras_lc.metrics import evaluate_cascade, format_report


def test_synthetic_is_deterministic_and_valid():
    a = synthetic_arrays(4, 40, 48, num_classes=5, seed=7)
    b = synthetic_arrays(4, 40, 48, num_classes=5, seed=7)
    c = synthetic_arrays(4, 40, 48, num_classes=5, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    images, labels = a
    assert images.dtype == np.uint8 and images.shape == (4, 40, 48, 3)
    assert labels.shape == (4, 40, 48) and labels.min() >= 0 and labels.max() <= 5
    assert (labels == 0).mean() > 0.3  # wide easy background
    assert (labels == 5).any()  # void boundary bands


def test_synthetic_dataset_batches():
    ds = synthetic(5, 32, 32, num_classes=3, seed=1, batch_size=2)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0][0].dtype == tf.uint8 and batches[0][1].shape == (2, 32, 32)
    assert len(class_names(5)) == 5 and class_names(5)[0] == "background"
    with pytest.raises(ValueError, match="num_classes"):
        synthetic(2, 32, 32, num_classes=1)


class _Fixed:
    """A stand-in model whose outputs are known exactly (for checking the numbers)."""

    num_classes = 3
    ignore_class = 3
    rho = 0.5

    def __init__(self, labels, stage):
        self.labels, self.stage = labels, stage

    def __call__(self, images, rho=None, training=False):
        return {"labels": tf.constant(self.labels), "stage": tf.constant(self.stage)}


def test_evaluate_numbers_on_known_outputs():
    truth = np.array([[[0, 0, 1, 1], [2, 2, 3, 3]]])  # 3 = void
    pred = np.array([[[0, 1, 1, 1], [2, 0, 2, 2]]], np.int32)
    stage = np.array([[[1, 1, 2, 3], [3, 3, 1, 1]]], np.uint8)
    model = _Fixed(pred, stage)
    r = evaluate_cascade(model, [(np.zeros((1, 2, 4, 3), np.uint8), truth)], class_names=["a", "b", "c"])
    # class 0: tp 1, fp 1 (pred 0 at a truth-2 pixel), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3;
    # class 2: tp 1, fn 1 -> 1/2
    assert r["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 1 / 2})
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert r["stage_share"] == pytest.approx([4 / 8, 1 / 8, 3 / 8])  # all pixels, void included
    assert r["per_class_stage_share"]["a"] == pytest.approx([1.0, 0.0, 0.0])
    assert r["per_class_stage_share"]["b"] == pytest.approx([0.0, 0.5, 0.5])
    assert r["per_class_stage_share"]["c"] == pytest.approx([0.0, 0.0, 1.0])
    assert "mIoU" in format_report(r)


def test_evaluate_rejects_bad_labels_and_empty_data():
    model = _Fixed(np.zeros((1, 2, 2), np.int32), np.ones((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="labels out of range"):
        evaluate_cascade(model, [(np.zeros((1, 2, 2, 3)), np.array([[[0, 9], [0, 0]]]))])
    with pytest.raises(ValueError, match="empty"):
        evaluate_cascade(model, [])
    with pytest.raises(ValueError, match="rho"):
        evaluate_cascade(model, [], rho=1.5)
