"""Inference speed of keras-hub's DeepLabV3+ next to our cascades, side by side in one run.

    pip install --no-deps keras-hub==0.32.0 regex tokenizers
    python benchmarks/peer_keras_hub.py MODEL.keras[@RHO[@SCALE]] ... [--images ../shared/data/camvid/val/images]
        [--height 360 --width 480] [--repeats 10] [--json out.json]

The peer is the stock alternative a Keras user would pick: `DeepLabV3ImageSegmenter` on a
ResNet-18-like `ResNetBackbone` (64/128/256/512 filters, 2 basic blocks each), ASPP rates
6/12/18 on P5, decoder on P2, 11 classes; built from its config (no presets, nothing
downloaded, random weights: speed does not depend on them). Every model takes uint8 images
and returns labels `[B, H, W]`, each in its own `tf.function`; all of them run once per round,
one after another (`keras_lc.benchmark.median_seconds`). Each `MODEL@RHO` is timed at that ρ
(default: the model's) and densely (the same weights, every stage on every pixel). `MODEL@RHO@SCALE`
runs the model on the images resized by SCALE (e.g. 1.5: thin classes gain), in one pass, with
the probabilities resized back (`LayerCascade.predict_multiscale(scales=(SCALE,))`): the same
uint8 images in and labels out as every other row.
"""

import argparse
import contextlib
import glob
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def peer_segmenter(num_classes=11):
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18],
        low_level_feature_key="P2", projection_filters=48,
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="MODEL.keras, MODEL.keras@RHO or MODEL.keras@RHO@SCALE")
    p.add_argument("--images", default="../shared/data/camvid/val/images", help="a folder of PNG/JPEG frames")
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import keras
    import tensorflow as tf

    import keras_lc  # noqa: F401
    from keras_lc.benchmark import median_seconds
    from keras_lc.models import folded_batchnorm

    paths = sorted(glob.glob(os.path.join(args.images, "*.png")) + glob.glob(os.path.join(args.images, "*.jpg")))
    if paths:
        frames = [tf.image.resize(tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False),
                                  (args.height, args.width)) for f in paths[: max(args.batch, 1)]]
        images = tf.cast(tf.stack([frames[i % len(frames)] for i in range(args.batch)]), tf.uint8)
    else:
        rng = np.random.default_rng(0)
        images = tf.constant(rng.integers(0, 256, (args.batch, args.height, args.width, 3)).astype(np.uint8))
    pieces = {}
    peer = peer_segmenter()

    @tf.function
    def run_peer(x):
        # DeepLabV3+ concatenates P2 with the upsampled P5: sides must be multiples of 32 (360 -> 384), so pad
        # and crop the labels back, as a user of the peer must.
        h, w = x.shape[1], x.shape[2]
        padded = tf.pad(tf.cast(x, tf.float32) / 255.0, [[0, 0], [0, -h % 32], [0, -w % 32], [0, 0]])
        labels = tf.argmax(peer(padded, training=False), axis=-1, output_type=tf.int32)
        return labels[:, :h, :w]

    pieces["keras-hub DeepLabV3+ (ResNet-18-like)"] = (run_peer, (images,))
    params = {"keras-hub DeepLabV3+ (ResNet-18-like)": peer.count_params()}
    folded = contextlib.ExitStack()  # our models run with BN folded once, as their SavedModel exports do
    for spec in args.models:
        path, _, rest = spec.partition("@")
        rho, _, scale = rest.partition("@")
        model = keras.models.load_model(path)
        folded.enter_context(folded_batchnorm(model))
        rho, scale = (float(rho) if rho else model.rho), (float(scale) if scale else 1.0)
        name = os.path.basename(path) + (f" at {scale:g}x" if scale != 1.0 else "")

        def make(m, r, dense, s):
            @tf.function
            def run(x):
                if s != 1.0:  # ρ = 1 is the dense network (no region switch in the graph)
                    return m.predict_multiscale(x, scales=(s,), rho=1.0 if dense else r)["labels"]
                return m.forward_details(x, rho=r, dense=dense)["labels"]

            return run

        if f"{name} dense" not in pieces:  # the same file at several rho: one dense row
            pieces[f"{name} dense"] = (make(model, 1.0, True, scale), (images,))
        pieces[f"{name} rho {rho:g}"] = (make(model, rho, False, scale), (images,))
        params[f"{name} dense"] = params[f"{name} rho {rho:g}"] = model.count_params()
    with folded:
        seconds = median_seconds(pieces, args.repeats, warmup=2)
    peer_ips = args.batch / seconds["keras-hub DeepLabV3+ (ResNet-18-like)"]
    print(f"{args.height}x{args.width}, batch {args.batch}, uint8 in, labels out, median of {args.repeats} rounds; "
          f"{cpu_model()}, {os.cpu_count()} CPUs")
    print("| model | parameters | images/s | vs keras-hub peer |")
    print("|---|---|---|---|")
    rows = []
    for name, s in seconds.items():
        ips = args.batch / s
        rows.append({"model": name, "parameters": params[name], "images_per_s": ips, "vs_peer": ips / peer_ips})
        print(f"| {name} | {params[name]:,} | {ips:.2f} | {ips / peer_ips:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"height": args.height, "width": args.width, "batch": args.batch, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
