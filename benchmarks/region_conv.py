"""Layer-level speed: RegionConv2D (gather -> one matmul -> scatter) against a dense Conv2D.

For each real layer shape of the tiny and IRNet stages 2-3 and each active fraction of a
blob-shaped region, times in one run, alternating: the dense convolution, and the region
convolution (the stage's RegionIndex built once beforehand, as in the network; its neighbour
indices are cached per kernel/dilation). Graph mode (tf.function), no XLA; median of repeats.

    python benchmarks/region_conv.py [--repeats 30] [--threads 2] [--json OUT]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

FRACTIONS = (0.05, 0.15, 0.30, 0.50, 0.75, 1.00)
# (name, H, W, C_in, C_out, kernel, dilation): the tiny backbone at CamVid 360x480 (stage maps 90x120, width 96),
# and IRNet-LC stages 2-3 at 512x512 (64x64 maps) as in the paper.
SHAPES = (
    ("tiny s2/s3 3x3 d2 96->96", 90, 120, 96, 96, (3, 3), 2),
    ("tiny s2/s3 1x1 96->96", 90, 120, 96, 96, (1, 1), 1),
    ("IRNet-B 1x1 1088->192", 64, 64, 1088, 192, (1, 1), 1),
    ("IRNet-B 1x7 128->160 d2", 64, 64, 128, 160, (1, 7), 2),
    ("IRNet-C 3x1 224->256 d4", 64, 64, 224, 256, (3, 1), 4),
)


def blob_region(h, w, fraction, seed=0):
    """A blob-shaped region `[1, h, w]` (keras_lc.benchmark.blob_region, one image)."""
    from keras_lc.benchmark import blob_region as blobs

    return blobs((1, h, w), fraction, seed)


def bench_args(doc, argv, repeats=30):
    """The layer benchmarks' command line (--repeats, --threads, --json); sets TF's thread pools."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    return args


def median_ms(fns, repeats, warmup=3):
    """`fns` {name: (tf.function, args)} alternating over rounds; median ms per name (keras_lc.benchmark)."""
    from keras_lc.benchmark import median_seconds

    return {name: 1000 * t for name, t in median_seconds(fns, repeats, warmup).items()}


def layer_and_input(h, w, cin, cout, kernel_size, dilation):
    """A built RegionConv2D, a random input `[1, h, w, cin]` and the layer's kernel as a constant."""
    from keras_lc.layers import RegionConv2D

    x = tf.random.normal([1, h, w, cin])
    layer = RegionConv2D(cout, kernel_size, dilation_rate=dilation)
    layer.build(x.shape)
    return x, layer, tf.constant(layer.kernel.numpy())


def write_rows(args, rows):
    """Write the result rows to `--json` when asked; the exit status."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None):
    args = bench_args(__doc__, argv)
    from keras_lc.layers import RegionIndex

    rows = []
    for name, h, w, cin, cout, k, d in SHAPES:
        x, layer, kernel = layer_and_input(h, w, cin, cout, k, d)

        @tf.function
        def dense(x):
            return tf.nn.convolution(x, kernel, padding="SAME", dilations=(d, d) if isinstance(d, int) else d)

        for fraction in FRACTIONS:
            region = tf.constant(blob_region(h, w, fraction))

            @tf.function
            def region_conv(x, region):
                index = RegionIndex(region)
                return layer(x, region=index)

            @tf.function
            def index_only(region):  # what a stage builds once: coordinates, inverse, neighbourhoods
                index = RegionIndex(region)
                if k != (1, 1):
                    return index.neighbours(layer.kernel_size, layer.dilation_rate), index.inverse
                return index.flat, index.inverse

            med = median_ms(
                {"dense": (dense, (x,)), "region": (region_conv, (x, region)), "index": (index_only, (region,))},
                args.repeats,
            )
            # The index is built once per stage and shared by its convs: report the layer without it too.
            layer_only = max(med["region"] - med["index"], 0.0)
            rows.append(
                {
                    "layer": name,
                    "fraction": fraction,
                    "dense_ms": med["dense"],
                    "region_ms": med["region"],
                    "index_ms": med["index"],
                    "ratio": med["region"] / med["dense"],
                    "ratio_without_index": layer_only / med["dense"],
                    "target": fraction + 0.1,
                }
            )
            r = rows[-1]
            print(
                f"{name:<26} {100 * fraction:5.0f}%  dense {r['dense_ms']:7.2f} ms  region {r['region_ms']:7.2f} ms "
                f"(index {r['index_ms']:5.2f})  ratio {r['ratio']:.2f}  w/o index {r['ratio_without_index']:.2f}  "
                f"target <= {r['target']:.2f}",
                flush=True,
            )
    return write_rows(args, rows)


if __name__ == "__main__":
    sys.exit(main())
