"""Why a region MBConv block does not shrink with its region: its parts timed on their own.

    python benchmarks/depthwise_share.py [--fraction 0.3] [--rounds 200]

One Lite0 stage-3 block (192 channels expanded to 1152, 5×5 depthwise at dilation 2) on the 1/16 grid of a
480×360 frame (23×30 = 690 cells), random weights: the two 1×1 convs (matmuls) on every cell and on a region of
`--fraction` of the cells, the depthwise conv (+ bias, ReLU6) on the full map, which the region path ("map"
method) runs whatever the region, and one gather of the region's rows from the map. Each part in its own
`tf.function`, the mean over `--rounds` calls after 20 warm-up calls.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def mean_ms(fn, arg, rounds):
    for _ in range(20):
        fn(arg)
    start = time.perf_counter()
    for _ in range(rounds):
        fn(arg)
    return (time.perf_counter() - start) / rounds * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    h, w, c, hidden = 23, 30, 192, 1152
    cells = h * w
    n = int(round(args.fraction * cells))
    rng = np.random.default_rng(0)
    expand = tf.constant(rng.normal(size=(c, hidden)).astype(np.float32))
    project = tf.constant(rng.normal(size=(hidden, c)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(5, 5, hidden, 1)).astype(np.float32))
    bias = tf.constant(rng.normal(size=(hidden,)).astype(np.float32))
    rows = tf.constant(np.sort(rng.choice(cells, n, replace=False)).astype(np.int32))

    @tf.function
    def one_by_one(v):
        return tf.matmul(tf.nn.relu6(tf.nn.bias_add(tf.matmul(v, expand), bias)), project)

    @tf.function
    def depthwise(x):
        y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=[2, 2])
        return tf.nn.relu6(tf.nn.bias_add(y, bias))

    @tf.function
    def gather(x):
        return tf.gather(tf.reshape(x, [-1, hidden]), rows)

    full = tf.constant(rng.normal(size=(cells, c)).astype(np.float32))
    part = tf.constant(rng.normal(size=(n, c)).astype(np.float32))
    fmap = tf.constant(rng.normal(size=(1, h, w, hidden)).astype(np.float32))
    t_full, t_part = mean_ms(one_by_one, full, args.rounds), mean_ms(one_by_one, part, args.rounds)
    t_dw, t_gather = mean_ms(depthwise, fmap, args.rounds), mean_ms(gather, fmap, args.rounds)
    dense, region = t_full + t_dw, t_part + t_dw + 2 * t_gather
    print(f"{h}x{w} cells, {c}->{hidden} channels, region {n} cells ({100 * n / cells:.0f}%), ms per call:")
    print(f"  1x1 convs: all cells {t_full:.2f}, region {t_part:.2f} ({t_part / t_full:.2f}x)")
    print(f"  5x5 depthwise on the full map {t_dw:.2f}; one gather of the region rows {t_gather:.2f}")
    print(f"  block: dense {dense:.2f}, region (1x1 on the rows, depthwise on the map, 2 gathers) {region:.2f}"
          f" = {region / dense:.2f} of dense (the region's fraction: {n / cells:.2f})")


if __name__ == "__main__":
    main()
