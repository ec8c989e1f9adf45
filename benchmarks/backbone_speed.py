"""Network-level speed of an LC backbone against the same weights run densely, on synthetic regions.

Untrained weights decide nothing meaningful, so the forwarded region after stage 1 is set by
hand: a blob-shaped region covering 100/75/50/25% of the stage maps, reaching stages 2 and 3.
One run, alternating dense and cascade rounds; median of repeats; batch 1.

    python benchmarks/backbone_speed.py [--backbone irnet] [--size 512] [--repeats 3] [--json OUT]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def blob(h, w, fraction, seed=0):
    if fraction >= 1:
        return np.ones((1, h, w), bool)
    noise = np.random.default_rng(seed).normal(size=(1, h, w, 1)).astype(np.float32)
    for _ in range(3):
        noise = tf.nn.avg_pool2d(noise, 7, 1, "SAME").numpy()
    return noise[..., 0] >= np.quantile(noise, 1 - fraction)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="irnet")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from keras_lc import build_model
    from keras_lc.models.factory import DENSE_THRESHOLDS

    model = build_model(args.backbone, num_classes=21, rho=1.0)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3)).astype(np.uint8))
    one = tf.constant(1.0)

    def make(dense, threshold):
        @tf.function
        def run(images, region):
            model.dense_threshold = threshold
            f = model.run_stage(1, model.preprocess(images), rho=one)["features"]
            path = "dense" if dense else "auto"
            f = model.run_stage(2, f, region, rho=one, path=path)["features"]
            model.run_stage(3, f, region, rho=one, path=path)
            return f

        return run

    dense_fn = make(True, None)
    threshold = DENSE_THRESHOLDS[args.backbone]
    auto_fn, region_fn = make(False, threshold), make(False, None)
    h = args.size // 8
    regions = {fr: tf.constant(blob(h, h, fr)) for fr in args.fractions}
    full = tf.constant(np.ones((1, h, h), bool))
    calls = (
        [("dense", dense_fn, full)]
        + [(f"auto {fr}", auto_fn, regions[fr]) for fr in args.fractions]
        + [(f"region {fr}", region_fn, regions[fr]) for fr in args.fractions]
    )
    for _, fn, r in calls:
        fn(x, r).numpy()
    times = {name: [] for name, *_ in calls}
    for _ in range(args.repeats):
        for name, fn, r in calls:
            t = time.perf_counter()
            fn(x, r).numpy()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        f"{args.backbone} at {args.size}x{args.size}, batch 1, median of {args.repeats}; dense "
        f"{1 / med['dense']:.2f} images/s ({1000 * med['dense']:.0f} ms); auto = dense above {threshold:.0%} forwarded"
    )
    print(
        "| forwarded after stage 1 | cascade, auto dense fallback (images/s) | vs dense "
        "| cascade, region path only | vs dense |"
    )
    print("|---|---|---|---|---|")
    rows = []
    for fr in args.fractions:
        a, r = med[f"auto {fr}"], med[f"region {fr}"]
        rows.append(
            {
                "fraction": fr,
                "auto_images_per_s": 1 / a,
                "auto_speedup": med["dense"] / a,
                "region_images_per_s": 1 / r,
                "region_speedup": med["dense"] / r,
            }
        )
        print(f"| {100 * fr:.0f}% | {1 / a:.2f} | {med['dense'] / a:.2f}x | {1 / r:.2f} | {med['dense'] / r:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dense_images_per_s": 1 / med["dense"], "rows": rows, **vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
