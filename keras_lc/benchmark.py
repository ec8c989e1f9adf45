"""Speed of a cascade against the same weights computed densely, measured side by side.

All timings are medians over `repeats` rounds; in each round the dense network and
every ρ run once, one after the other, so that machine noise hits them alike. Every routine
here runs inside `folded_batchnorm(model)` (frozen BN folded once, as in an exported model).
"""

import time

import numpy as np
import tensorflow as tf

from keras_lc.layers.stage_head import check_rho
from keras_lc.metrics import stage_share
from keras_lc.models.folding import with_folded_batchnorm


def _cascade_fn(model):
    @tf.function(reduce_retracing=True)
    def run(images, rho):
        out = model.forward_details(images, rho=rho, training=False, dense=False)
        return out["labels"], out["stage"]

    return run


def _computed_fn(model):
    @tf.function(reduce_retracing=True)
    def run(images, rho):
        """The share of stage-grid cells stages 2 and 3 compute: their region grown by the model's halo."""
        from keras_lc.layers.region_index import grow_region

        regions = model.forward_details(images, rho=rho, training=False, dense=False)["regions"]
        return [tf.reduce_mean(tf.cast(grow_region(regions[k], model.halo), tf.float32)) for k in (1, 2)]

    return run


def _dense_fn(model):
    @tf.function(reduce_retracing=True)
    def run(images):
        out = model.forward_details(images, rho=1.0, training=False, dense=True)
        return out["labels"], out["stage"]

    return run


def _seconds(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    tf.nest.map_structure(lambda t: None if t is None else t.numpy(), result)  # wait for the values
    return time.perf_counter() - start, result


def median_seconds(pieces, repeats, warmup=1):
    """`pieces` `{name: (fn, args)}` run one after another in each of `warmup + repeats`
    rounds, so that machine noise hits them alike; the median seconds of each name over
    the `repeats` timed rounds."""
    times = {name: [] for name in pieces}
    for round_ in range(warmup + repeats):
        for name, (fn, args) in pieces.items():
            t, _ = _seconds(fn, *args)
            if round_ >= warmup:
                times[name].append(t)
    return {name: float(np.median(v)) for name, v in times.items()}


@with_folded_batchnorm
def benchmark_cascade(model, images, rhos=(1.0, 0.995, 0.985, 0.95, 0.9, 0.8), repeats=10, warmup=2, ideal=True,
                      tensor_rho=False):
    """Images/s of the dense network and of the cascade at each ρ, in one run, alternating.

    With `ideal`, each ρ also gets the speedup a perfect region path would reach with
    the same decisions: stage k (with its head) timed densely on the whole map, t_k,
    then `(t_1 + t_2 + t_3) / (t_1 + f_2 t_2 + f_3 t_3)`, f_k the share of pixels that
    reach stage k (`ideal_speedup`). It separates what the kernels lose from what the decisions allow
    (stage 1 and its head always run on every pixel). With a halo, stages 2-3 compute more
    cells than reach them: `ideal_halo_speedup` uses the cells they compute, c_k (`computed`,
    the region grown by the halo, as a share of the stage grid), instead of f_k: the most a
    perfect region path could give with this halo.

    Args:
        model: a `LayerCascade`.
        images: uint8 `[B, H, W, 3]` (the batch that is timed).
        rhos: the ρ values to time.
        repeats: timed rounds (median reported); warmup: untimed rounds first.
        ideal: bool, also time the stages densely and report `ideal_speedup`.
        tensor_rho: bool. False: ρ is a Python number, as `model.rho = r` gives `predict()`
            (at ρ = 1 the graph is the dense one, with no switch). True: ρ is a float32 tensor
            fed to one graph, as the SavedModel signatures take it (the per-stage dense/region
            switch stays in the graph at every ρ).

    Returns:
        `{"dense": {"images_per_s", "seconds"}, "cascade": [{"rho", "images_per_s",
        "seconds", "speedup", "stage_share": [s1, s2, s3], "computed": [c2, c3]}, ...], "batch",
        "height", "width", "repeats", "tensor_rho", "halo"}`; with `ideal`, also `"stage_seconds":
        {"stage1", "stage2", "stage3"}` (dense, heads included), `"ideal_speedup"` and
        `"ideal_halo_speedup"` per ρ.
    """
    rhos = [check_rho(r) for r in rhos]
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}.")
    images = tf.convert_to_tensor(images)
    batch = int(images.shape[0])
    cascade = _cascade_fn(model)
    pieces = {"dense": (_dense_fn(model), (images,))}
    for r in rhos:
        pieces[r] = (cascade, (images, tf.constant(r, tf.float32) if tensor_rho else r))
    seconds = median_seconds(pieces, repeats, warmup)
    dense_s = seconds["dense"]
    result = {
        "batch": batch,
        "height": int(images.shape[1]),
        "width": int(images.shape[2]),
        "repeats": repeats,
        "tensor_rho": bool(tensor_rho),
        "halo": model.halo,
        "dense": {"images_per_s": batch / dense_s, "seconds": dense_s},
        "cascade": [],
    }
    computed = _computed_fn(model)  # untimed
    for r in rhos:
        fn, fn_args = pieces[r]
        share = stage_share(fn(*fn_args)[1].numpy())
        cells = [float(c) for c in computed(*fn_args)]
        result["cascade"].append({"rho": r, "images_per_s": batch / seconds[r], "seconds": seconds[r],
                                  "speedup": dense_s / seconds[r], "stage_share": share, "computed": cells})
    if ideal:
        t = stage_times(model, images, rho=1.0, repeats=repeats, warmup=warmup, dense=True)
        result["stage_seconds"] = {k: t[k] for k in ("stage1", "stage2", "stage3")}
        for row in result["cascade"]:
            row["ideal_speedup"] = ideal_speedup(t, row["stage_share"])
            row["ideal_halo_speedup"] = ideal_speedup(t, row["stage_share"], computed=row["computed"])
    return result


@with_folded_batchnorm
def benchmark_test_time(model, images, scales, flip=False, rho=None, crf=None, repeats=5, warmup=1):
    """Images/s of the plain cascade, of multi-scale testing, and of dense CRF on top, in one run, alternating.

    Args:
        model: a `LayerCascade`; images: uint8 `[B, H, W, 3]`.
        scales, flip: as `LayerCascade.predict_multiscale`.
        rho: the ρ of every pass (the model's when None).
        crf: None or CRF parameters (`keras_lc.crf`): also time the CRF on the multi-scale probabilities.

    Returns:
        `{"plain": images/s, "multiscale": images/s, "multiscale_crf": images/s (with crf), "scales",
        "flip", "batch", "repeats"}`.
    """
    from keras_lc.models.cascade import check_scales

    scales = check_scales(scales)
    images = tf.convert_to_tensor(images)
    rho = tf.constant(model.rho if rho is None else check_rho(rho), tf.float32)

    @tf.function(reduce_retracing=True)
    def plain(x):
        return model(x, rho=rho, training=False)["probs"]

    @tf.function(reduce_retracing=True)
    def multiscale(x):
        return model.predict_multiscale(x, scales=scales, flip=flip, rho=rho)["probs"]

    pieces = {"plain": (plain, (images,)), "multiscale": (multiscale, (images,))}
    if crf is not None:
        from keras_lc import crf as crf_lib

        crf = crf_lib.check_params(crf)

        def with_crf(x):
            probs = multiscale(x).numpy()
            return tf.constant(np.stack([crf_lib.dense_crf(im, p, crf) for im, p in zip(x.numpy(), probs)]))

        pieces["multiscale_crf"] = (with_crf, (images,))
    seconds = median_seconds(pieces, repeats, warmup)
    batch = int(images.shape[0])
    return {**{name: batch / t for name, t in seconds.items()}, "scales": list(scales), "flip": bool(flip),
            "crf": crf, "batch": batch, "repeats": repeats}


@with_folded_batchnorm
def stage_times(model, images, rho=None, repeats=10, warmup=2, dense=False):
    """Seconds per batch spent in each stage (stage + its head).

    The paper's Fig. 7b. Each piece is a separate `tf.function` fed with the real
    intermediate results of the same batch, so stage k is timed on the region that
    really reaches it. `dense=True` computes every stage densely (the whole map,
    whatever the region; at ρ = 1 the plain dense network, with nothing masked).

    Returns:
        `{"stage1": s, "stage2": s, "stage3": s, "rho": ρ, "stage_share": [...]}`.
    """
    rho = model.rho if rho is None else check_rho(rho)
    rho_t = tf.constant(rho, tf.float32)
    images = tf.convert_to_tensor(images)

    @tf.function(reduce_retracing=True)
    def first(images):
        out = model.run_stage(1, model.preprocess(images), rho=rho_t)
        return out["features"], out["probs"], out["next_region"], out["low_level"]

    def later(k):
        @tf.function(reduce_retracing=True)
        def run(f, region, low_level):
            out = model.run_stage(k, f, region, rho=rho_t, path=("full" if rho >= 1 else "dense") if dense else "auto",
                                  low_level=low_level)
            return out["features"], out["probs"], out["next_region"]

        return run

    second, third = later(2), later(3)
    f1, _, r2, low = first(images)
    f2, _, r3 = second(f1, r2, low)
    pieces = {"stage1": (first, (images,)), "stage2": (second, (f1, r2, low)), "stage3": (third, (f2, r3, low))}
    result = median_seconds(pieces, repeats, warmup)
    n = float(tf.size(r2))
    share2 = float(tf.reduce_sum(tf.cast(r2, tf.float32))) / n
    share3 = float(tf.reduce_sum(tf.cast(r3, tf.float32))) / n
    result.update({"rho": rho, "stage_share": [1 - share2, share2 - share3, share3]})
    return result


def blob_region(shape, fraction, seed=0):
    """A blob-shaped bool region `[B, h, w]` covering `fraction` of each image (smoothed noise,
    thresholded at its quantile): the shape of real forwarded regions, for speed measurements."""
    if fraction >= 1.0:
        return np.ones(shape, bool)
    noise = np.random.default_rng(seed).normal(size=(*shape, 1)).astype(np.float32)
    for _ in range(3):
        noise = tf.nn.avg_pool2d(noise, 7, 1, "SAME").numpy()
    smooth = noise[..., 0]
    cut = np.quantile(smooth.reshape(shape[0], -1), 1.0 - fraction, axis=1)
    return smooth >= cut[:, None, None]


REGION_COST_SLACK = 0.1  # the region path of a stage should cost at most (fraction + this) × its dense time


@with_folded_batchnorm
def measure_crossover(model, images, fractions=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), repeats=5, warmup=1):
    """The forwarded fraction above which stages 2-3 are cheaper computed densely, on this machine,
    and what the region path of each stage costs against its dense time.

    Stages 2 and 3 with their heads run on real features of `images` (stage 1's, and stage
    2's dense output), each forced to the region path and to the dense path, on blob regions
    covering each fraction, and to the plain dense path on every pixel (all six alternating,
    median of `repeats`). The crossover compares the region path with the masked dense path,
    its alternative on the same region: use it as `model.dense_threshold`. A perfect region
    path costs `fraction` × the plain dense stage's time; the project's target is at most
    `fraction + REGION_COST_SLACK` from 30% forwarded up.

    Returns:
        `{"fractions": [...], "ratio": [stages 2-3 region time / masked dense time per fraction],
        "stage_ratio": {"stage2": [...], "stage3": [...]} (region time / plain dense time),
        "within_target": {"stage2": [bool],
        "stage3": [bool]} (None below 30%), "dense_seconds": s (stages 2-3), "crossover": f}`:
        f interpolates linearly where the ratio reaches 1 (the smallest fraction measured if the
        region path never wins, 1.0 if it always does).
    """
    fractions = sorted(float(f) for f in fractions)
    if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be numbers in (0, 1]; got {fractions}.")
    images = tf.convert_to_tensor(images)
    rho = tf.constant(1.0, tf.float32)
    first = model.run_stage(1, model.preprocess(images), rho=rho)
    features, low = {2: first["features"]}, first["low_level"]
    full = tf.ones(tuple(features[2].shape[:3]), tf.bool)
    features[3] = model.run_stage(2, features[2], full, rho=rho, path="dense", low_level=low)["features"]

    def stage_fn(k, path):
        @tf.function(reduce_retracing=True)
        def run(f, region):
            return model.run_stage(k, f, region, rho=rho, path=path, low_level=low)["probs"]

        return run

    fns = {(k, path): stage_fn(k, path) for k in (2, 3) for path in ("region", "dense", "full")}
    ratios, dense_times = [], []
    stage_ratio = {"stage2": [], "stage3": []}
    for fraction in fractions:
        region = tf.constant(blob_region(tuple(features[2].shape[:3]), fraction))
        times = median_seconds({key: (fn, (features[key[0]], full if key[1] == "full" else region))
                                for key, fn in fns.items()}, repeats, warmup)
        dense = times[2, "dense"] + times[3, "dense"]
        dense_times.append(dense)
        ratios.append((times[2, "region"] + times[3, "region"]) / dense)
        for k in (2, 3):  # against the plain dense stage (every pixel, nothing masked)
            stage_ratio[f"stage{k}"].append(times[k, "region"] / times[k, "full"])
    within = {name: [None if f < 0.3 else r <= f + REGION_COST_SLACK for f, r in zip(fractions, values)]
              for name, values in stage_ratio.items()}
    return {"fractions": fractions, "ratio": ratios, "stage_ratio": stage_ratio, "within_target": within,
            "dense_seconds": float(np.median(dense_times)), "crossover": crossover_from_ratios(fractions, ratios)}


def crossover_from_ratios(fractions, ratios):
    """Where region time / dense time first reaches 1 over increasing `fractions`: linear between the
    last fraction where the region path won and the first where it lost; the smallest fraction if it
    never wins, 1.0 if it always does."""
    crossover = 1.0
    for i, ratio in enumerate(ratios):
        if ratio >= 1.0:
            if i == 0:
                crossover = fractions[0]
            else:
                f0, r0 = fractions[i - 1], ratios[i - 1]
                crossover = f0 + (1.0 - r0) * (fractions[i] - f0) / (ratio - r0)
            break
    return round(crossover, 3)


def ideal_speedup(stage_seconds, stage_share, computed=None):
    """The speedup a perfect region path would reach with these decisions: stages 2-3 cost exactly
    the share of pixels reaching them of their dense time (`stage_seconds` {"stage1", "stage2",
    "stage3"}, dense; `stage_share` [decided at 1, 2, 3]). `computed` `[c2, c3]`: the shares of
    cells stages 2-3 compute (their regions grown by a halo), used instead of the shares reaching them.

    The ratio is taken within the stage times, `(t1 + t2 + t3) / (t1 + c2 t2 + c3 t3)`, so that ρ = 1
    gives exactly 1: stages timed as separate functions can sum to more than one dense pass (55.7 vs
    40.4 ms for the Lite0 flagship on the twenty-third session's box), which, divided into the dense
    pass's time, understated the ideal."""
    reach2, reach3 = (1.0 - stage_share[0], stage_share[2]) if computed is None else computed
    t = stage_seconds
    return (t["stage1"] + t["stage2"] + t["stage3"]) / (t["stage1"] + reach2 * t["stage2"] + reach3 * t["stage3"])


def format_benchmark(result):
    """A plain-text table of `benchmark_cascade`'s result."""
    ideal = "stage_seconds" in result
    halo = bool(result.get("halo"))
    rho_kind = "rho as a tensor (the SavedModel path)" if result.get("tensor_rho") else "rho as a Python number"
    header = f"{'':>12}{'images/s':>10}{'vs dense':>10}"
    if ideal:
        header += f"{'ideal':>8}" + (f"{'ideal halo':>12}" if halo else "")
    header += "   share decided at stage 1/2/3" + ("   cells computed by stage 2/3" if halo else "")
    blank = (f"{'':>8}" + (f"{'':>12}" if halo else "")) if ideal else ""
    lines = [
        f"batch {result['batch']} at {result['height']}x{result['width']}, median of {result['repeats']} rounds, "
        + rho_kind,
        header,
        f"{'dense':>12}{result['dense']['images_per_s']:10.2f}{1.0:9.2f}x" + blank,
    ]
    for row in result["cascade"]:
        share = " / ".join(f"{100 * s:.1f}%" for s in row["stage_share"])
        best = ""
        if ideal:
            best = f"{row['ideal_speedup']:7.2f}x" + (f"{row['ideal_halo_speedup']:11.2f}x" if halo else "")
        cells = ("   " + " / ".join(f"{100 * c:.1f}%" for c in row["computed"])) if halo else ""
        rho = "rho " + format(row["rho"], "g")
        lines.append(f"{rho:>12}{row['images_per_s']:10.2f}{row['speedup']:9.2f}x{best}   {share}{cells}")
    if ideal:
        t = result["stage_seconds"]
        lines.append(
            "ideal: the speedup if stages 2-3 cost exactly the share of pixels reaching them (dense stage times "
            + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in t.items()) + ", heads included)"
        )
    if halo:
        lines.append(f"halo {result['halo']}: stages 2-3 also compute {result['halo']} cell(s) around the pixels "
                     "reaching them (context only): 'cells computed' is their grown region's share of the stage grid"
                     + ("; 'ideal halo' the ideal speedup with those shares" if ideal else ""))
    return "\n".join(lines)
