"""Writing compact features back into a map: `tf.scatter_nd` against one gather through an inverse index.

A region layer ends by turning its compact `[N, C]` results into a map with zeros outside the region
(`RegionIndex.scatter`, and `scatter_for_conv` before a k×k conv). Two ways, timed in one run and
alternating on blob regions of a 90×120×96 map (the tiny stages at 360×480) and a 64×64×320 map:
`tf.scatter_nd` (zero-fill, then write N rows), and `tf.gather` of every pixel's row from the values
with one zero row appended, through the region's inverse index (what RegionIndex does; the index is
built once per stage, so it is built beforehand here). Forward only, graph mode, no XLA.

    python benchmarks/scatter_paths.py [--repeats 40] [--threads 2] [--json OUT]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from region_conv import bench_args, blob_region, median_ms, write_rows  # noqa: E402

SHAPES = ((90, 120, 96), (64, 64, 320))
FRACTIONS = (0.05, 0.15, 0.30, 0.50, 0.75)


def main(argv=None):
    args = bench_args(__doc__, argv, repeats=40)
    from keras_lc.layers import RegionIndex

    rows = []
    for h, w, c in SHAPES:
        for fraction in FRACTIONS:
            index = RegionIndex(tf.constant(blob_region(h, w, fraction)))
            coords, shape = index.coords, [1, h, w, c]
            values = tf.random.normal([int(index.flat.shape[0]), c])
            inverse = index.inverse[:-1]
            scatter_nd = tf.function(lambda v: tf.scatter_nd(coords, v, shape))
            inverse_gather = tf.function(
                lambda v: tf.reshape(tf.gather(tf.concat([v, tf.zeros([1, c])], 0), inverse), shape)
            )
            np.testing.assert_array_equal(scatter_nd(values), inverse_gather(values))
            ms = median_ms(
                {"scatter_nd": (scatter_nd, (values,)), "inverse gather": (inverse_gather, (values,))}, args.repeats
            )
            rows.append(
                {
                    "map": [h, w, c],
                    "fraction": fraction,
                    "scatter_nd_ms": ms["scatter_nd"],
                    "inverse_gather_ms": ms["inverse gather"],
                }
            )
            print(
                f"{h}x{w}x{c} {100 * fraction:3.0f}%  scatter_nd {ms['scatter_nd']:.3f} ms  "
                f"inverse gather {ms['inverse gather']:.3f} ms  ratio {ms['inverse gather'] / ms['scatter_nd']:.2f}",
                flush=True,
            )
    return write_rows(args, rows)


if __name__ == "__main__":
    sys.exit(main())
