"""What a head type costs: EfficientNet-Lite0 LC with each `head` (plain, aspp, decoder), ImageNet weights.

Per head, alternating in every round (median of `--repeats`): the dense forward at ρ = 1 on one 360×480 frame
(batch 1, uint8 in, labels out) and one initial-phase training step on 8 random 256² crops; plus the parameter count.

    python benchmarks/head_cost.py [--heads plain decoder] [--repeats 5]
"""

import argparse
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", nargs="+", default=["plain", "decoder"], choices=["plain", "aspp", "decoder"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from keras_lc import build_model

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 360, 480, 3)).astype(np.uint8)
    crops = rng.integers(0, 256, (8, 256, 256, 3)).astype(np.uint8)
    labels = rng.integers(0, 12, (8, 256, 256)).astype(np.int32)
    models = {h: build_model("efficientnet_lite0", num_classes=11, ignore_class=11, head=h, weights="imagenet")
              for h in args.heads}
    forward = {h: tf.function(lambda x, m=m: m(x, rho=1.0)["labels"]) for h, m in models.items()}
    for h, m in models.items():  # compile and trace outside the timing
        m.compile(optimizer="adam")
        m.training_mode = "initial"
        m.train_on_batch(crops, labels)
        forward[h](frame)
    times = {h: {"forward": [], "step": []} for h in models}
    for _ in range(args.repeats):
        for h, m in models.items():
            start = time.perf_counter()
            forward[h](frame).numpy()
            times[h]["forward"].append(time.perf_counter() - start)
            start = time.perf_counter()
            m.train_on_batch(crops, labels)
            times[h]["step"].append(time.perf_counter() - start)
    print(f"| head | parameters | dense forward, 360x480 batch 1 (ms) | training step, 8 x 256² (s) |  median of "
          f"{args.repeats}")
    print("|---|---|---|---|")
    for h, m in models.items():
        print(f"| {h} | {m.count_params():,} | {1000 * np.median(times[h]['forward']):.1f} | "
              f"{np.median(times[h]['step']):.3f} |")


if __name__ == "__main__":
    main()
