"""The numbers behind the paper's analysis figures (Figs. 1b, 5, 7a, 7b).

Each function takes plain arrays or a model and returns plain numbers, so that the
numbers can be tested on hand-set inputs and plotted by `keras_lc.viz`.
"""

import numpy as np
import tensorflow as tf

from keras_lc.benchmark import benchmark_cascade, stage_times
from keras_lc.metrics import evaluate_cascade
from keras_lc.models.folding import with_folded_batchnorm

DIFFICULTIES = ("easy", "moderate", "extremely_hard")


def boundary_mask(truth, width=2):
    """Pixels within `width` pixels (Chebyshev distance) of a label change, void included.

    Args:
        truth: int `[..., H, W]`. Returns: bool, same shape.
    """
    truth = np.asarray(truth)
    h, w = truth.shape[-2:]
    pad = [(0, 0)] * (truth.ndim - 2) + [(width, width), (width, width)]
    padded = np.pad(truth, pad, mode="edge")
    out = np.zeros(truth.shape, bool)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            out |= padded[..., dy : dy + h, dx : dx + w] != truth
    return out


def difficulty_split(confidence, prediction, truth, num_classes, ignore_class=None, threshold=0.95, boundary_width=2):
    """The paper's Fig. 1b: easy / moderate / extremely hard pixels per class.

    easy: correct with confidence ≥ threshold; moderate: confidence < threshold;
    extremely hard: wrong with confidence ≥ threshold. Classes are ground-truth
    classes; ignored pixels are left out.

    Args:
        confidence: float `[N, H, W]` max probability; prediction, truth: int `[N, H, W]`.

    Returns:
        dict: `counts` {difficulty: [K]}, `share` {difficulty: [K]} (per class, sums
        to 1), `total_share` {difficulty: float}, `hard_on_boundary` (share of
        extremely hard pixels within `boundary_width` of a label boundary) and
        `pixels_on_boundary` (the same share over all valid pixels, for contrast).
    """
    confidence, prediction, truth = (np.asarray(a) for a in (confidence, prediction, truth))
    valid = (truth >= 0) & (truth < num_classes)
    if ignore_class is not None:
        valid &= truth != ignore_class
    sure = confidence >= threshold
    correct = prediction == truth
    masks = {"easy": valid & sure & correct, "moderate": valid & ~sure, "extremely_hard": valid & sure & ~correct}
    t = np.where(valid, truth, 0)
    counts = {d: np.bincount(t[m].ravel(), minlength=num_classes)[:num_classes] for d, m in masks.items()}
    per_class = np.maximum(sum(counts.values()), 1)
    boundary = boundary_mask(np.where(valid, truth, -1), boundary_width)
    hard = masks["extremely_hard"]
    n_valid = max(int(valid.sum()), 1)
    return {
        "threshold": threshold,
        "counts": {d: c.tolist() for d, c in counts.items()},
        "share": {d: (c / per_class).tolist() for d, c in counts.items()},
        "total_share": {d: float(m.sum() / n_valid) for d, m in masks.items()},
        "hard_on_boundary": float((hard & boundary).sum() / hard.sum()) if hard.any() else None,
        "pixels_on_boundary": float((valid & boundary).sum() / n_valid),
    }


def stage_share_ratios(per_class_stage_share):
    """The paper's Fig. 5 ratios per class: stage-2/stage-1 and stage-3/stage-2 shares (None where undefined)."""

    def ratio(a, b):
        return a / b if b > 0 else None

    return {
        name: {"stage2_over_stage1": ratio(s[1], s[0]), "stage3_over_stage2": ratio(s[2], s[1])}
        for name, s in per_class_stage_share.items()
    }


@with_folded_batchnorm
def analyze_model(model, dataset, class_names, rhos=(1.0, 0.995, 0.985, 0.95, 0.9, 0.8), threshold=0.95,
                  boundary_width=2, repeats=5):
    """All numbers behind Figs. 1b, 5, 7a and 7b for one model and one dataset.

    The speed figures time the first batch of `dataset` (dense vs cascade, side by side).
    """
    batches = [(np.asarray(x), np.asarray(y)) for x, y in dataset]
    if not batches:
        raise ValueError("The analysis dataset is empty.")
    conf, pred, truth = [], [], []
    for x, y in batches:
        out = model(x, rho=1.0, training=False)  # the deepest prediction, as in the paper's Fig. 1b
        conf.append(tf.reduce_max(out["probs"], -1).numpy())
        pred.append(out["labels"].numpy())
        truth.append(y[..., 0] if y.ndim == 4 else y)
    fig1b = difficulty_split(np.concatenate(conf), np.concatenate(pred), np.concatenate(truth), model.num_classes,
                             model.ignore_class, threshold, boundary_width)
    fig1b["classes"] = list(class_names)

    at_rho = evaluate_cascade(model, batches, class_names=class_names)
    fig5 = {
        "rho": at_rho["rho"],
        "per_class_stage_share": at_rho["per_class_stage_share"],
        "ratios": stage_share_ratios(at_rho["per_class_stage_share"]),
    }
    speed = benchmark_cascade(model, batches[0][0], rhos=rhos, repeats=repeats, ideal=False)  # Fig. 7b times below
    fig7a = {"dense_images_per_s": speed["dense"]["images_per_s"], "points": []}
    for row in speed["cascade"]:
        ev = evaluate_cascade(model, batches, rho=row["rho"], class_names=class_names)
        fig7a["points"].append({"rho": row["rho"], "miou": ev["miou"], "images_per_s": row["images_per_s"],
                                "speedup": row["speedup"], "stage_share": ev["stage_share"]})
    fig7b = stage_times(model, batches[0][0], repeats=repeats)
    return {"fig1b": fig1b, "fig5": fig5, "fig7a": fig7a, "fig7b": fig7b,
            "batch": speed["batch"], "height": speed["height"], "width": speed["width"]}
