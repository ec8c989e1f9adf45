"""The compiled region depthwise kernel against the map path: per stage on a region, and the whole cascade.

    python benchmarks/fused_depthwise.py saved_models/camvid_lite0_lc.keras [--images DIR] [--frames 4]
        [--rhos 0.985 0.9] [--scale 1.0] [--fractions 0.3 0.5 0.7] [--repeats 10]

Both ways give the same numbers (tests/test_efficientnet_lite.py); this times them side by side in one run,
alternating (`keras_lc.benchmark.median_seconds`), on the same weights:

0. The op alone on a blob region's rows (`--fractions` of the 1x stage grid, 23x30), against TF's dense
   depthwise conv on the whole grid, for the flagship's two kernel shapes (672 channels 5x5, 1152 channels 3x3),
   net of an empty call.
1. Stages 2-3 with their heads on blob regions covering each fraction of the stage grid (`blob_region`, halo 0,
   as `keras-lc bench --crossover --halo 0`), by the map and by the compiled kernel, ÷ the plain dense stage.
2. The whole model, batch 1, on `--frames` CamVid val frames (resized by `--scale`; random pixels without the data):
   the dense network, then the cascade at each ρ with every `RegionDepthwiseConv2D` on "map" and on "fused"
   (the model's own halo and dense_threshold). Images/s and ÷ dense.
3. A cascade-phase training step (forward with `training=True` on the region path, the gradient of a sum of squared
   logits), batch 8 of 256x256 crops of the frames, map vs fused.

The method is read when a function is traced, so each piece is traced once with its method set.
"""

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--images", default="../shared/data/camvid/val/images")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--rhos", type=float, nargs="+", default=[0.985, 0.9])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_lc  # noqa: F401
    from keras_lc import kernels
    from keras_lc.benchmark import blob_region, median_seconds, stage_share
    from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D
    from keras_lc.layers.region_index import RegionIndex
    from keras_lc.models import folded_batchnorm

    if not kernels.available():
        sys.exit(f"the compiled kernel is not available here: {kernels.unavailable_reason()}")
    model = keras.models.load_model(args.model)
    layers = [la for la in model._flatten_layers() if isinstance(la, RegionDepthwiseConv2D)]
    if not layers:
        sys.exit(f"{args.model} has no RegionDepthwiseConv2D (an EfficientNet-Lite model has)")

    def traced(fn, fn_args, method):
        """`fn` as a tf.function traced now, with every region depthwise conv on `method`."""
        for layer in layers:
            layer.method = method
        fn = tf.function(fn)
        fn(*fn_args)
        return fn, fn_args

    paths = sorted(glob.glob(os.path.join(args.images, "*.png")))[: args.frames]
    frames = ([np.asarray(keras.utils.load_img(q))[None] for q in paths] if paths else
              [np.random.default_rng(i).integers(0, 256, (1, 360, 480, 3)).astype(np.uint8)
               for i in range(args.frames)])
    size = [round(frames[0].shape[1] * args.scale), round(frames[0].shape[2] * args.scale)]
    frames = [tf.cast(tf.round(tf.image.resize(f, size)), tf.uint8) if args.scale != 1 else tf.constant(f)
              for f in frames]
    rho1 = tf.constant(1.0)
    halo = model.halo
    with folded_batchnorm(model):
        # 0. the op alone
        op_rows = []
        for fraction in args.fractions:
            region = tf.constant(blob_region((1, 23, 30), fraction))
            pieces = {"empty": (tf.function(lambda t: t), (region,))}
            for c, kk in ((672, 5), (1152, 3)):
                taps = RegionIndex(region).compact_neighbours((kk, kk), (1, 1))
                rows = tf.random.normal([int(taps.shape[0]), c])
                weights = tf.random.normal([kk * kk, c])
                grid = tf.random.normal([1, 23, 30, c])
                pieces[c, "op"] = (tf.function(kernels.region_depthwise_taps), (rows, taps, weights))
                pieces[c, "dense"] = (tf.function(lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")),
                                      (grid, tf.reshape(weights, [kk, kk, c, 1])))
            s = median_seconds(pieces, 10 * args.repeats, warmup=5)
            op_rows.append((fraction, {c: (s[c, "op"] - s["empty"], s[c, "dense"] - s["empty"]) for c in (672, 1152)}))

        # 1. stages on blob regions, halo 0
        model.halo = 0
        x = model.pad_images(model.preprocess(frames[0]))
        first = model.run_stage(1, x, rho=rho1)
        f2, low = first["features"], first["low_level"]
        full = tf.ones(tf.shape(f2)[:3], tf.bool)
        f3 = model.run_stage(2, f2, full, rho=rho1, path="full", low_level=low)["features"]

        def stage(k, path):
            return lambda f, r: model.run_stage(k, f, r, rho=rho1, path=path, low_level=low)["probs"]

        stage_rows = []
        for fraction in args.fractions:
            region = tf.constant(blob_region(tuple(f2.shape[:3]), fraction))
            pieces = {}
            for k, f in ((2, f2), (3, f3)):
                pieces[k, "dense"] = traced(stage(k, "full"), (f, full), "map")
                for method in ("map", "fused"):
                    pieces[k, method] = traced(stage(k, "region"), (f, region), method)
            s = median_seconds(pieces, args.repeats, warmup=1)
            stage_rows.append((fraction, {k: (s[k, "map"] / s[k, "dense"], s[k, "fused"] / s[k, "dense"])
                                          for k in (2, 3)}))
        model.halo = halo

        # 2. the whole model, batch 1
        def whole(rho, dense):
            def run(*images):  # the frames are arguments: captured constants would be folded away at trace time
                outs = [model.forward_details(f, rho=rho, training=False, dense=dense) for f in images]
                return [(o["labels"], o["stage"]) for o in outs]  # the labels: all three stages feed them
            return run

        pieces = {"dense": traced(whole(1.0, True), frames, "map")}
        for rho in args.rhos:
            for method in ("map", "fused"):
                pieces[rho, method] = traced(whole(rho, False), frames, method)
        s = median_seconds(pieces, args.repeats, warmup=1)
        shares = {rho: stage_share(np.concatenate([t[1].numpy() for t in pieces[rho, "map"][0](*frames)]))
                  for rho in args.rhos}
        differ = {rho: sum(int(np.sum(a[0].numpy() != b[0].numpy())) for a, b in
                           zip(pieces[rho, "map"][0](*frames), pieces[rho, "fused"][0](*frames))) for rho in args.rhos}

    # 3. a cascade-phase training step (BN stays frozen in these models; no folding while training)
    crops = tf.concat([f[:, :256, :256] for f in frames] * (8 // len(frames) + 1), axis=0)[:8]
    variables = model.trainable_variables

    def train_step(images):
        with tf.GradientTape() as tape:
            out = model.forward_details(images, training=True, path="region")
            loss = tf.add_n([tf.reduce_mean(tf.square(t)) for t in out["logits"]])
        return [tf.reduce_sum(g) for g in tape.gradient(loss, variables) if g is not None]

    steps = {method: traced(train_step, (crops,), method) for method in ("map", "fused")}
    t_step = median_seconds(steps, args.repeats, warmup=1)
    grads = {method: np.array([float(g) for g in fn(*fn_args)]) for method, (fn, fn_args) in steps.items()}
    grad_gap = float(np.max(np.abs(grads["map"] - grads["fused"]) / (np.abs(grads["map"]) + 1e-3)))
    for layer in layers:
        layer.method = "auto"
    print(f"{os.path.basename(args.model)}: {len(frames)} frame(s) at {size[1]}x{size[0]}, stage grid "
          f"{tuple(f2.shape[1:3])}, halo {halo}, dense_threshold {model.dense_threshold}, median of {args.repeats}")
    print("the op alone, ms net of an empty call: forwarded  672ch 5x5 op / dense  1152ch 3x3 op / dense")
    for fraction, r in op_rows:
        print(f"{'':42s}{fraction:9.0%}  {1e3 * r[672][0]:6.3f} / {1e3 * r[672][1]:6.3f}  "
              f"{1e3 * r[1152][0]:9.3f} / {1e3 * r[1152][1]:6.3f}")
    print("region path / plain dense stage (halo 0)")
    print("forwarded  stage2 map  stage2 fused  stage3 map  stage3 fused")
    for fraction, r in stage_rows:
        print(f"{fraction:9.0%}  {r[2][0]:10.2f}  {r[2][1]:12.2f}  {r[3][0]:10.2f}  {r[3][1]:12.2f}")
    n = len(frames)
    print(f"whole model, batch 1: dense {n / s['dense']:.2f} images/s")
    for rho in args.rhos:
        m, fz = s[rho, "map"], s[rho, "fused"]
        print(f"  rho {rho}: map {n / m:.2f} images/s ({s['dense'] / m:.2f}x dense), fused {n / fz:.2f} images/s "
              f"({s['dense'] / fz:.2f}x dense); decided at stage 1/2/3 "
              + " / ".join(f"{100 * v:.1f}%" for v in shares[rho])
              + f"; labels that differ between map and fused: {differ[rho]} of {n * size[0] * size[1]}")
    print(f"training step (cascade phase, batch 8, 256x256): map {1e3 * t_step['map']:.0f} ms, "
          f"fused {1e3 * t_step['fused']:.0f} ms; per-variable gradient sums differ by at most {grad_gap:.1e} "
          "(relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
