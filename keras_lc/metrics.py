"""Evaluation of a cascade: confusion-matrix IoU and where pixels are decided."""

import numpy as np
import tensorflow as tf

from keras_lc.models.folding import with_folded_batchnorm


def _check_labels(labels, num_classes, ignore_class):
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_class is not None:
        bad &= labels != ignore_class
    if bad.any():
        allowed = f"[0, {num_classes})" + (f" or the ignore label {ignore_class}" if ignore_class is not None else "")
        raise ValueError(
            f"labels out of range: labels must be in {allowed}; found {sorted(set(labels[bad].ravel().tolist()))[:5]}"
        )


def stage_share(stage):
    """Share of the pixels of a stage map (uint8 1..3, any shape) decided at stages 1, 2, 3: a list of 3."""
    stage = np.asarray(stage)
    return (np.bincount(stage.ravel(), minlength=4)[1:4] / max(stage.size, 1)).tolist()


def _checked(labels, num_classes, ignore_class):
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    _check_labels(labels, num_classes, ignore_class)
    return labels


@with_folded_batchnorm
def evaluate_cascade(model, dataset, rho=None, class_names=None, scales=None, flip=False, fusion="mean", crf=None):
    """Evaluate a LayerCascade on `(images, labels)` batches.

    Args:
        model: a `LayerCascade`.
        dataset: iterable of `(images [B,H,W,3], labels [B,H,W])` batches.
        rho: optional ρ for this evaluation (the model's ρ otherwise).
        class_names: optional list of K names.
        scales, flip, fusion: multi-scale testing (`LayerCascade.predict_multiscale`); None: one plain pass.
        crf: None, or dense CRF parameters (a dict, see `keras_lc.crf`) applied to the final
            probabilities of each image before scoring.

    Returns:
        dict: `miou` (mean IoU over classes present in labels or predictions),
        `per_class_iou` {name: IoU or None if the class never occurs},
        `pixel_accuracy`, `stage_share` [3] (share of all pixels decided at
        stages 1..3), `per_class_stage_share` {name: [3]} (of a class's labelled
        pixels, the share decided at each stage: the paper's Fig. 5),
        `confusion_matrix` K×K (rows: truth), `rho`, `num_images`; with `scales` also
        `scales`, `flip`, `fusion` and `stage_share_per_scale` [S][3]; with `crf`, `crf` (the parameters).
    """
    k = model.num_classes
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"Got {len(names)} class names for a model with {k} classes.")
    if rho is not None:
        from keras_lc.layers.stage_head import check_rho

        check_rho(rho)
    rho_t = tf.constant(model.rho if rho is None else float(rho), tf.float32)
    if scales is not None:
        from keras_lc.models.cascade import check_scales

        scales = check_scales(scales)
    if crf is not None:
        from keras_lc import crf as crf_lib

        crf = crf_lib.check_params(crf)
        crf_lib.require_densecrf()  # a missing package fails before the model runs

    @tf.function(reduce_retracing=True)
    def forward(images):
        if scales is None:
            out = model(images, rho=rho_t, training=False)
            return out, tf.zeros([1, 3])
        out = model.predict_multiscale(images, scales=scales, flip=flip, rho=rho_t, fusion=fusion)
        return out, out["stage_share"]

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        out, scale_share = forward(images)
        if crf is not None:
            out = dict(out)
            out["labels"] = tf.numpy_function(_crf_batch, [images, out["probs"]], tf.int32, stateful=False)
        labels = tf.cast(labels, tf.int32)
        valid = labels < k if model.ignore_class is None else tf.not_equal(labels, model.ignore_class)
        t = tf.boolean_mask(labels, valid)
        p = tf.boolean_mask(out["labels"], valid)
        cm = tf.math.confusion_matrix(t, p, num_classes=k, dtype=tf.int64)
        s = tf.cast(out["stage"], tf.int32) - 1
        stage_counts = tf.math.bincount(tf.reshape(s, [-1]), minlength=3, maxlength=3, dtype=tf.int64)
        class_stage = tf.math.confusion_matrix(t, tf.boolean_mask(s, valid), num_classes=max(k, 3), dtype=tf.int64)
        return cm, stage_counts, class_stage[:k, :3], scale_share

    def _crf_batch(images, probs):
        return np.stack([crf_lib.dense_crf(im.astype(np.uint8), p, crf) for im, p in zip(images, probs)])

    scale_share = 0.0
    cm = np.zeros((k, k), np.int64)
    stage_counts = np.zeros(3, np.int64)
    class_stage = np.zeros((k, 3), np.int64)
    num_images = 0
    from keras_lc.models.cascade import clear_errors

    with clear_errors():  # a reader's check (label values, sizes) names the file in one line
        for images, labels in dataset:
            a, b, c, d = step(images, _checked(labels, k, model.ignore_class))
            scale_share = scale_share + d.numpy() * int(np.shape(images)[0])
            cm += a.numpy()
            stage_counts += b.numpy()
            class_stage += c.numpy()
            num_images += int(np.shape(images)[0])
    if num_images == 0:
        raise ValueError("The evaluation dataset is empty.")
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    per_class_stage = class_stage / np.maximum(class_stage.sum(1, keepdims=True), 1)
    extra = {} if scales is None else {"scales": list(scales), "flip": bool(flip), "fusion": fusion,
                                       "stage_share_per_scale": (scale_share / num_images).tolist()}
    if crf is not None:
        extra["crf"] = crf
    return extra | {
        "rho": float(rho_t.numpy()),
        "num_images": num_images,
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "stage_share": (stage_counts / max(stage_counts.sum(), 1)).tolist(),
        "per_class_stage_share": {n: per_class_stage[i].tolist() for i, n in enumerate(names)},
        "confusion_matrix": cm.tolist(),
    }


def format_report(result):
    """A plain-text table of `evaluate_cascade`'s result."""
    lines = [
        f"images: {result['num_images']}   rho: {result['rho']:.4g}",
        f"mIoU: {100 * result['miou']:.2f}   pixel accuracy: {100 * result['pixel_accuracy']:.2f}",
        "share of pixels decided at stage 1/2/3: "
        + " / ".join(f"{100 * s:.1f}%" for s in result["stage_share"]),
    ]
    if "scales" in result:
        lines.append(f"scales {result['scales']} ({result['fusion']}{', flipped' if result['flip'] else ''}); "
                     "stage 1/2/3 per scale: " + "; ".join(
                         " / ".join(f"{100 * s:.1f}%" for s in row) for row in result["stage_share_per_scale"]))
    if "crf" in result:
        lines.append("dense CRF: " + ", ".join(f"{k} {v:g}" for k, v in result["crf"].items()))
    lines += [
        "",
        f"{'class':<14}{'IoU':>8}{'stage1':>9}{'stage2':>9}{'stage3':>9}",
    ]
    for name, iou in result["per_class_iou"].items():
        shares = result["per_class_stage_share"][name]
        iou_s = "   n/a" if iou is None else f"{100 * iou:8.2f}"
        lines.append(f"{name:<14}{iou_s:>8}" + "".join(f"{100 * s:8.1f}%" for s in shares))
    return "\n".join(lines)
