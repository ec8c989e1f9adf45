"""Writing compact features back into a map: `tf.scatter_nd` against one gather through an inverse index.

A region layer ends by turning its compact `[N, C]` results into a map with zeros outside the region
(`RegionIndex.scatter`, and `scatter_for_conv` before a k×k conv). Two ways, timed in one run and
alternating on blob regions of a 90×120×96 map (the tiny stages at 360×480) and a 64×64×320 map:
`tf.scatter_nd` (zero-fill, then write N rows), and `tf.gather` of every pixel's row from the values
with one zero row appended, through the region's inverse index (what RegionIndex does; the index is
built once per stage, so it is built beforehand here). Forward only, graph mode, no XLA.

    python benchmarks/scatter_paths.py [--repeats 40] [--threads 2]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from region_conv import blob_region  # noqa: E402

SHAPES = ((90, 120, 96), (64, 64, 320))
FRACTIONS = (0.05, 0.15, 0.30, 0.50, 0.75)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from keras_lc.layers import RegionIndex

    for h, w, c in SHAPES:
        for fraction in FRACTIONS:
            index = RegionIndex(tf.constant(blob_region(h, w, fraction)))
            coords, shape = index.coords, [1, h, w, c]
            values = tf.random.normal([int(index.flat.shape[0]), c])
            inverse = index.inverse[:-1]
            scatter_nd = tf.function(lambda v: tf.scatter_nd(coords, v, shape))
            inverse_gather = tf.function(
                lambda v: tf.reshape(tf.gather(tf.concat([v, tf.zeros([1, c])], 0), inverse), shape))
            np.testing.assert_array_equal(scatter_nd(values), inverse_gather(values))
            fns = {"scatter_nd": scatter_nd, "inverse gather": inverse_gather}
            times = {name: [] for name in fns}
            for round_ in range(3 + args.repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(values).numpy()
                    if round_ >= 3:
                        times[name].append(time.perf_counter() - start)
            ms = {name: 1000 * float(np.median(v)) for name, v in times.items()}
            print(f"{h}x{w}x{c} {100 * fraction:3.0f}%  scatter_nd {ms['scatter_nd']:.3f} ms  "
                  f"inverse gather {ms['inverse gather']:.3f} ms  ratio {ms['inverse gather'] / ms['scatter_nd']:.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
