"""Dilated depthwise convs on the dilation-phase layout: what it saves, old and new code side by side in one process.

    python benchmarks/phase_layout.py [MODEL.keras] [--rho 0.985 0.9] [--repeats 20] [--batch 1]
        [--data-dir ../shared/data/camvid]

`tf.nn.depthwise_conv2d` with a dilation copies the map into its phase layout and back (SpaceToBatchND /
BatchToSpaceND) on every call. The region path now writes the compact rows straight into that layout
(`RegionIndex.scatter_phases`) and reads them back from it; a dense stage converts once per run of equally
dilated blocks. This script traces the model twice, with the current code and with the previous one
restored for the trace (the region depthwise conv through a zero map and TF's dilated conv; every dense block
with its own dilated conv), and times the dense network and the cascade at each ρ for both, alternating, on
the first val frames (median of `--repeats`). Same numbers either way (checked here on the labels).
"""

import argparse
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import keras_lc  # noqa: E402,F401  (registers the model's classes)
from keras_lc.benchmark import median_seconds  # noqa: E402
from keras_lc.layers.region_depthwise import RegionDepthwiseConv2D  # noqa: E402
from keras_lc.layers.region_index import as_region_index  # noqa: E402
from keras_lc.models.efficientnet_lite import EfficientNetLiteStage  # noqa: E402


def previous_depthwise(self, values, index, training=None, kernel=None, finish=None, phased=False):
    """The region depthwise conv before the phase layout: a zero map and TF's (dilated) conv."""
    finish = finish or (lambda t: t)
    if index.dense:
        return finish(self.apply_dense(index.masked(values), kernel=kernel))
    return index.gather(finish(self.apply_dense(index.scatter(values), kernel=kernel)))


def previous_stage_call(self, inputs, region=None, training=None):
    """The stage before the phase layout: every block on the map as it is."""
    if self.stage == 1 or self.output_stride == 32 and region is None:
        return self._dense(inputs)[0]
    index = as_region_index(region)
    values = index.gather(inputs)
    for block in self.blocks:
        values = block.apply_compact(values, index)
    return index.scatter_update(inputs, values) if self.blocks[0].residual else index.scatter(values)


def traced(model, x, previous, **kwargs):
    fn = tf.function(lambda x: model.forward_details(x, training=False, **kwargs)["labels"])
    saved = RegionDepthwiseConv2D.apply_compact, EfficientNetLiteStage.call
    if previous:
        RegionDepthwiseConv2D.apply_compact, EfficientNetLiteStage.call = previous_depthwise, previous_stage_call
    try:
        concrete = fn.get_concrete_function(x)  # the graph is fixed here
    finally:
        RegionDepthwiseConv2D.apply_compact, EfficientNetLiteStage.call = saved
    return concrete


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="saved_models/camvid_lite0_lc.keras")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.985, 0.9])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--data-dir", default="../shared/data/camvid")
    args = parser.parse_args()
    model = keras.models.load_model(args.model)
    files = sorted(glob.glob(os.path.join(args.data_dir, "val", "images", "*.png")))[:args.batch]
    x = tf.constant(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    pieces = {}
    for code in ("previous", "current"):
        pieces[f"{code} dense"] = (traced(model, x, code == "previous", rho=1.0, dense=True), (x,))
        for rho in args.rho:
            pieces[f"{code} rho {rho:g}"] = (traced(model, x, code == "previous", rho=rho), (x,))
    for name in pieces:
        if name.startswith("current"):
            other = pieces[name.replace("current", "previous")][0](x)
            assert np.array_equal(pieces[name][0](x).numpy(), other.numpy()), f"{name}: labels differ"
    seconds = median_seconds(pieces, args.repeats, warmup=3)
    print(f"batch {args.batch}, {tuple(x.shape[1:3])}, median of {args.repeats} alternating rounds "
          "(labels identical between the two codes)")
    print("| | previous code: images/s (vs its dense) | current code: images/s (vs its dense) | current / previous |")
    print("|---|---|---|---|")
    for name in [n[len("current "):] for n in pieces if n.startswith("current")]:
        p, c = seconds[f"previous {name}"], seconds[f"current {name}"]
        print(f"| {name} | {args.batch / p:.2f} ({seconds['previous dense'] / p:.2f}x) | "
              f"{args.batch / c:.2f} ({seconds['current dense'] / c:.2f}x) | {p / c:.2f}x |")


if __name__ == "__main__":
    main()
