"""The floor of a region convolution built from TF ops: its matmul and its neighbourhood gather alone.

A k×k region convolution made of TensorFlow ops needs at least the k·k neighbourhoods of the N
region pixels (one gather, `[N, k·k·C]`) and the product with the kernel (one matmul). This times,
in one run and alternating, for the k×k layers of benchmarks/region_conv.py: the dense Conv2D, that
matmul alone (on a ready `[N, k·k·C]` matrix), that gather alone (the real neighbour index of a blob
region, built beforehand), both in one function (gather → matmul: the floor), and the whole
RegionConv2D (its index time subtracted, as a network builds the index once per stage; scatter
included). Where the floor exceeds the issue's target (fraction + 0.1) × dense, no arrangement of
these ops that gathers per pixel meets it (per-offset, batched and tile arrangements:
benchmarks/region_conv_variants.py). For a 1×1 conv the "matmul" column is what the network pays:
inside a stage its 1×1s run on the compact trunk, gathered once per stage.

    python benchmarks/region_conv_floor.py [--repeats 30] [--threads 2] [--json OUT]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from region_conv import SHAPES, bench_args, blob_region, layer_and_input, median_ms, write_rows  # noqa: E402

FRACTIONS = (0.15, 0.30, 0.50)


def main(argv=None):
    args = bench_args(__doc__, argv)
    from keras_lc.layers import RegionIndex

    rows = []
    for name, h, w, cin, cout, k, d in SHAPES:
        x, layer, kernel = layer_and_input(h, w, cin, cout, k, d)
        matrix = tf.reshape(kernel, [-1, cout])
        padded = tf.concat([tf.reshape(x, [-1, cin]), tf.zeros([1, cin])], 0)  # the zero row neighbours outside use
        dense = tf.function(lambda x: tf.nn.convolution(x, kernel, padding="SAME", dilations=(d, d)))
        matmul = tf.function(lambda patches: tf.matmul(patches, matrix))
        gather = tf.function(lambda flat: tf.reshape(tf.gather(padded, flat), [tf.shape(flat)[0], -1]))
        floor = tf.function(
            lambda flat: tf.matmul(tf.reshape(tf.gather(padded, flat), [tf.shape(flat)[0], -1]), matrix)
        )
        for fraction in FRACTIONS:
            region = tf.constant(blob_region(h, w, fraction))
            index = RegionIndex(region)
            neighbours = index.neighbours(layer.kernel_size, layer.dilation_rate)
            patches = gather(neighbours)

            @tf.function
            def region_conv(x, region):
                return layer(x, region=RegionIndex(region))

            @tf.function
            def index_only(region):
                return RegionIndex(region).neighbours(layer.kernel_size, layer.dilation_rate)

            ms = median_ms(
                {
                    "dense": (dense, (x,)),
                    "matmul": (matmul, (patches,)),
                    "gather": (gather, (neighbours,)),
                    "floor": (floor, (neighbours,)),
                    "region": (region_conv, (x, region)),
                    "index": (index_only, (region,)),
                },
                args.repeats,
            )
            row = {"layer": name, "fraction": fraction, "target": fraction + 0.1, "dense_ms": ms["dense"]}
            row.update({f"{key}_ratio": ms[key] / ms["dense"] for key in ("matmul", "gather", "floor")})
            row["region_without_index_ratio"] = max(ms["region"] - ms["index"], 0.0) / ms["dense"]
            rows.append(row)
            print(
                f"{name:<26} {100 * fraction:3.0f}%  dense {ms['dense']:6.2f} ms  matmul {row['matmul_ratio']:.2f}  "
                f"gather {row['gather_ratio']:.2f}  floor {row['floor_ratio']:.2f}  "
                f"RegionConv2D w/o index {row['region_without_index_ratio']:.2f}  target <= {row['target']:.2f}",
                flush=True,
            )
    return write_rows(args, rows)


if __name__ == "__main__":
    sys.exit(main())
