"""Side by side, alternating, in one process: the forward pass folding each frozen BN into its conv on every
call, and inside `folded_batchnorm` (folded once), dense and at one ρ, on a CamVid val frame; and whether the
labels agree.

    python benchmarks/fold_speed.py saved_models/camvid_lite0_lc.keras --rho 0.985 --repeats 30
"""

import argparse
import glob

import keras
import numpy as np
import tensorflow as tf

import keras_lc  # noqa: F401  (registers the layers)
from keras_lc.benchmark import median_seconds
from keras_lc.models import folded_batchnorm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rho", type=float, default=0.985)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", default="../shared/data/camvid/val/images")
    args = parser.parse_args()
    model = keras.saving.load_model(args.model)
    path = sorted(glob.glob(f"{args.images}/*.png"))[0]
    images = tf.constant(tf.io.decode_png(tf.io.read_file(path), channels=3).numpy()[None])
    rho = tf.constant(args.rho, tf.float32)

    def functions():
        return (tf.function(lambda x: model.forward_details(x, rho=1.0, dense=True)["labels"]),
                tf.function(lambda x, r: model.forward_details(x, rho=r, dense=False)["labels"]))

    dense, cascade = functions()
    dense(images), cascade(images, rho)  # traced here, outside: a tf.function traces at its first call
    with folded_batchnorm(model):  # traced inside: these read the folded variables
        dense_folded, cascade_folded = functions()
        pieces = {"dense, folded per call": (dense, (images,)), "dense, folded once": (dense_folded, (images,)),
                  f"rho {args.rho:g}, folded per call": (cascade, (images, rho)),
                  f"rho {args.rho:g}, folded once": (cascade_folded, (images, rho))}
        seconds = median_seconds(pieces, args.repeats, warmup=2)
    print(f"{path}, batch 1, median of {args.repeats} rounds")
    for name, s in seconds.items():
        print(f"{name:>30}: {1 / s:6.2f} images/s")
    same = [np.array_equal(a(images).numpy(), b(images).numpy()) for a, b in ((dense, dense_folded),)]
    same.append(np.array_equal(cascade(images, rho).numpy(), cascade_folded(images, rho).numpy()))
    print("same labels (dense, cascade):", same)


if __name__ == "__main__":
    main()
