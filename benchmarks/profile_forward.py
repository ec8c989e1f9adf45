"""Where the time of one forward pass goes: TF profiler op times, by op kind and by stage.

    python benchmarks/profile_forward.py [MODEL] [--rho 0.95] [--batch 1] [--runs 5]

Default MODEL saved_models/camvid_lc.keras on CamVid val frames (../shared/data/camvid). Profiles the dense
network and the cascade at ρ (a tensor, so the dense/region switch is in the graph, as in serving), `--runs`
forward passes each, and prints milliseconds per forward pass summed over the TF ops of each kind and of each
stage (op time summed over the executor threads; ops of one pass can overlap, so the sum can exceed wall time).
Written by hand because the profiler's own tools (TensorBoard profile plugin/xprof) are not installed here;
it reads the profiler's XSpace protobuf directly.
"""

import argparse
import collections
import glob
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import keras_lc  # noqa: E402,F401  (registers the model's classes)

KINDS = [  # (kind, op types); first match wins, the rest is "elementwise/other"
    (
        "conv (dense)",
        (
            "Conv2D",
            "_MklNativeConv2D",
            "_MklConv2D",
            "_FusedConv2D",
            "_MklNativeFusedConv2D",
            "_MklFusedConv2D",
            "DepthwiseConv2dNative",
            "SpaceToBatchND",
            "BatchToSpaceND",
        ),
    ),
    (
        "matmul (region conv)",
        ("MatMul", "_MklMatMul", "_MklNativeFusedMatMul", "_FusedMatMul", "BatchMatMulV2", "_MklBatchMatMulV2"),
    ),
    ("gather", ("GatherV2", "GatherNd", "ResourceGather")),
    ("scatter", ("ScatterNd", "TensorScatterUpdate", "TensorScatterAdd", "UnsortedSegmentSum")),
    ("index building", ("Where", "Cumsum", "Range", "FloorMod", "FloorDiv", "Tile", "Pad", "Concat", "ConcatV2")),
    ("norm/softmax", ("Mean", "Rsqrt", "Softmax", "SquaredDifference", "Max", "ArgMax")),
    ("resize", ("ResizeBilinear",)),
    ("control", ("If", "StatelessIf", "Switch", "Merge", "Identity", "ReadVariableOp", "Const", "_Retval", "_Arg")),
]


def kind_of(op_type):
    for kind, types in KINDS:
        if op_type in types:
            return kind
    return "elementwise/other"


def part_of(op_name):
    for part in ("stage1", "stage2", "stage3", "head1", "head2", "head3"):
        if part in op_name:
            return part
    return "glue (preprocess, combine, resize)"


def profile(fn, args, runs):
    logdir = tempfile.mkdtemp(prefix="keras_lc_prof_")
    for _ in range(3):
        fn(*args).numpy()
    tf.profiler.experimental.start(logdir)
    for _ in range(runs):
        fn(*args).numpy()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb").read())
    by_kind, by_part, by_type = collections.Counter(), collections.Counter(), collections.Counter()
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    for line in plane.lines:
        if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_inter"):
            continue
        for event in line.events:
            name = plane.event_metadata[event.metadata_id].name
            if ":" not in name or "::" in name:  # executor/threadpool bookkeeping spans, not TF ops
                continue
            op_name, op_type = name.rsplit(":", 1)
            if op_type in ("If", "StatelessIf"):
                continue  # a functional If's span contains its branch's ops; count those instead
            ms = event.duration_ps / 1e9 / runs
            by_kind[kind_of(op_type)] += ms
            by_part[part_of(op_name)] += ms
            by_type[op_type] += ms
    return by_kind, by_part, by_type


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="saved_models/camvid_lc.keras")
    parser.add_argument("--rho", type=float, default=0.95)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", default="../shared/data/camvid/val/images")
    args = parser.parse_args()
    model = keras.saving.load_model(args.model)
    paths = sorted(glob.glob(f"{args.images}/*.png"))[: args.batch]
    if len(paths) < args.batch:
        raise SystemExit(f"need {args.batch} PNG images in {args.images}")
    images = tf.constant(np.stack([tf.io.decode_png(tf.io.read_file(p), channels=3).numpy() for p in paths]))

    @tf.function
    def dense(x):
        return model.forward_details(x, rho=1.0, dense=True)["labels"]

    @tf.function
    def cascade(x, rho):
        return model.forward_details(x, rho=rho, dense=False)["labels"]

    rho = tf.constant(args.rho, tf.float32)
    results = {
        "dense": profile(dense, (images,), args.runs),
        f"rho {args.rho:g}": profile(cascade, (images, rho), args.runs),
    }
    print(f"ms per forward pass (batch {args.batch}, {images.shape[1]}x{images.shape[2]}), op time summed")
    for title, index in (("by op kind", 0), ("by part", 1), ("top op types", 2)):
        keys = sorted(
            {k for r in results.values() for k in r[index]}, key=lambda k: -max(r[index][k] for r in results.values())
        )
        keys = keys[:15] if index == 2 else keys
        print(f"\n{title:<36}" + "".join(f"{name:>14}" for name in results))
        for key in keys:
            print(f"{key:<36}" + "".join(f"{r[index][key]:14.1f}" for r in results.values()))
        if index < 2:
            print(f"{'total':<36}" + "".join(f"{sum(r[index].values()):14.1f}" for r in results.values()))


if __name__ == "__main__":
    main()
