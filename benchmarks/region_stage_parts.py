"""Where a region stage's time goes: stages 2-3 of a Lite model and one MBConv block's three ops, region vs dense.

    python benchmarks/region_stage_parts.py saved_models/camvid_lite0_lc.keras [IMAGE] [--fraction 0.3]
        [--repeats 20]

Stage 1 runs on IMAGE (default: the first CamVid val frame, else random pixels) at its size; stages 2-3 run on
its real features, on a blob region covering `--fraction` of the stage grid (`keras_lc.benchmark.blob_region`;
`--halo` 0 by default, as `keras-lc bench --crossover --halo 0`), and on every pixel (the plain dense stage).
Then the middle block of stage 2 is split into its expand 1x1, depthwise kxk (with its folded BN and ReLU6) and
project 1x1, each timed on the region's compact rows and on the full map. Every piece is its own `tf.function`,
all alternating (`keras_lc.benchmark.median_seconds`); the "empty call" row is the cost of calling a
`tf.function` at all, included in every other row.
"""

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("image", nargs="?", default=None)
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--halo", type=int, default=0, help="the stages' halo (default 0: the region is the fraction named)")
    args = p.parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_lc  # noqa: F401
    from keras_lc.benchmark import blob_region, median_seconds
    from keras_lc.layers.region_index import RegionIndex
    from keras_lc.models import folded_batchnorm

    model = keras.models.load_model(args.model)
    model.halo = args.halo
    frames = sorted(glob.glob("../shared/data/camvid/val/images/*.png"))
    path = args.image or (frames[0] if frames else None)
    image = (np.asarray(keras.utils.load_img(path))[None] if path else
             np.random.default_rng(0).integers(0, 256, (1, 360, 480, 3)).astype(np.uint8))  # no frames: noise
    rho = tf.constant(1.0)
    with folded_batchnorm(model):
        x = model.pad_images(model.preprocess(tf.constant(image)))
        f2 = model.run_stage(1, x, rho=rho)["features"]
        full = tf.ones(tf.shape(f2)[:3], tf.bool)
        f3 = model.run_stage(2, f2, full, rho=rho, path="full")["features"]
        region = tf.constant(blob_region(tuple(f2.shape[:3]), args.fraction))
        cells = int(tf.reduce_sum(tf.cast(region, tf.int32)))
        pieces = {"empty call": (tf.function(lambda t: t), (f2,))}

        def stage(k, path):
            return tf.function(lambda f, r: model.run_stage(k, f, r, rho=rho, path=path)["probs"])

        for k, f in ((2, f2), (3, f3)):
            pieces[f"stage {k} + head, dense"] = (stage(k, "full"), (f, full))
            pieces[f"stage {k} + head, region"] = (stage(k, "region"), (f, region))
        blocks = model.stages[1].blocks
        block = blocks[len(blocks) // 2]
        t_map = f2
        for b in blocks[: len(blocks) // 2]:
            t_map = b.apply_dense(t_map)
        t_rows = RegionIndex(region).gather(t_map)
        hidden_map = block.expand.apply_compact(t_map)
        hidden_rows = RegionIndex(region).gather(hidden_map)
        kernel, bias = block._depthwise_folded(hidden_map.dtype)

        def finish(y):
            return tf.nn.relu6(tf.nn.bias_add(y, bias))

        dw = block.depthwise
        pieces.update({
            "block: expand 1x1, dense": (tf.function(block.expand.apply_compact), (t_map,)),
            "block: expand 1x1, region rows": (tf.function(block.expand.apply_compact), (t_rows,)),
            "block: depthwise, dense": (tf.function(lambda h: finish(dw.apply_dense(h, kernel=kernel))), (hidden_map,)),
            "block: depthwise, region (map)": (tf.function(
                lambda h, r: dw.apply_compact(h, RegionIndex(r), kernel=kernel, finish=finish)), (hidden_rows, region)),
            "block: write-back of the rows": (tf.function(lambda h, r: RegionIndex(r).scatter(h)),
                                              (hidden_rows, region)),
            "block: project 1x1, dense": (tf.function(block.project.apply_compact), (hidden_map,)),
            "block: project 1x1, region rows": (tf.function(block.project.apply_compact), (hidden_rows,)),
        })
        seconds = median_seconds(pieces, args.repeats, warmup=2)
    print(f"{os.path.basename(args.model)}, stage grid {tuple(f2.shape[1:3])}, region {cells} cells "
          f"({cells / int(np.prod(f2.shape[:3])):.0%}), block {block.name} ({block.expand.conv.filters} hidden "
          f"channels, {dw.kernel_size[0]}x{dw.kernel_size[1]}), median of {args.repeats} rounds, ms")
    for name, s in seconds.items():
        print(f"{name:34s} {1000 * s:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
