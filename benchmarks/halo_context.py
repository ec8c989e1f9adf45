"""Does context explain LC's gap to DSN? Stages 2-3 computed on the region grown by a halo.

    python benchmarks/halo_context.py MODEL.keras [--halo 0 1 2] [--rho 0.985] [--data-dir ../shared/data/camvid]

The paper's region convolution reads zeros outside the region M, so a later stage sees less context than
the same stage run densely (DSN). With `LayerCascade.halo` (set here on the loaded model) stages 2-3 compute
on M grown by `halo` cells while the decisions, the final map and the forwarded pixels stay those of M: at
halo 0 this is the paper's model; with a large halo it is the dense stages' features with the cascade's
decisions. Prints CamVid val mIoU per halo and the share of cells stages 2 and 3 compute (first batch); `--speed N`
times instead the first val frame (batch 1, ρ a Python number) densely and at each halo, alternating, median of N.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lc  # noqa: E402,F401  (registers the model's classes)
from keras_lc.benchmark import median_seconds  # noqa: E402
from keras_lc.data import read_info  # noqa: E402
from keras_lc.data.sources import load_split  # noqa: E402
from keras_lc.layers.region_index import grow_region  # noqa: E402
from keras_lc.metrics import evaluate_cascade  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--halo", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rho", type=float, default=0.985)
    parser.add_argument("--data-dir", default="../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--speed", type=int, default=0, help="timed rounds (0: no timing)")
    args = parser.parse_args()
    if args.speed:
        return speed(args)
    names = read_info(args.data_dir, "camvid")["names"]
    print(f"{args.model} at rho {args.rho}, CamVid {args.split}")
    print("| halo (cells) | mIoU | decided at stage 1 / 2 / 3 (%) | cells computed by stage 2 / 3, first batch (%) |")
    print("|---|---|---|---|")
    model = keras.models.load_model(args.model)
    first = next(iter(load_split("camvid", args.split, args.data_dir, 8)))[0]
    for halo in args.halo:
        model.halo = halo  # settable: the traced functions are reset
        regions = model.forward_details(first, rho=args.rho)["regions"][1:]
        shares = " / ".join(f"{100 * float(tf.reduce_mean(tf.cast(grow_region(r, halo), tf.float32))):.1f}"
                            for r in regions)
        result = evaluate_cascade(model, load_split("camvid", args.split, args.data_dir, 8), rho=args.rho,
                                  class_names=names)
        decided = " / ".join(f"{100 * s:.1f}" for s in result["stage_share"])
        print(f"| {halo} | {100 * result['miou']:.2f} | {decided} | {shares} |", flush=True)


def speed(args):
    frame = next(iter(load_split("camvid", args.split, args.data_dir, 1)))[0]
    pieces = {}
    for halo in [None, *args.halo]:  # None: the same weights dense
        model = keras.models.load_model(args.model)
        model.halo = halo or 0
        fn = tf.function(lambda x, m=model, d=halo is None: m.forward_details(x, rho=1.0 if d else args.rho, dense=d)[
            "labels"])
        pieces["dense" if halo is None else f"halo {halo}"] = (fn, (frame,))
    seconds = median_seconds(pieces, args.speed, warmup=2)
    print(f"batch 1, one {args.split} frame {tuple(frame.shape[1:3])}, rho {args.rho}, median of {args.speed} rounds:")
    for name, t in seconds.items():
        print(f"  {name}: {1 / t:.2f} images/s ({seconds['dense'] / t:.2f}x dense)")


if __name__ == "__main__":
    main()
