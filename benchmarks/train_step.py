"""Step time of cascade training against initial (DSN) training, same model, same batches, alternating.

    python benchmarks/train_step.py MODEL.keras [--data-dir ../shared/data/camvid] [--repeats 10] [--rho R]

With a trained model the cascade regions are the real ones (at the model's ρ): later stages
train only on the pixels that reach them. Optimizer updates are real (SGD with lr 0 would
still run every op): the model is a throw-away copy loaded from MODEL.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data-dir", default="../shared/data/camvid")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rho", type=float, default=None)
    args = p.parse_args(argv)
    import keras

    import keras_lc  # noqa: F401
    from keras_lc.data import directory_dataset

    models = {}
    for mode in ("initial", "cascade"):  # one copy per mode, each traced once
        m = keras.models.load_model(args.model)
        if args.rho is not None:
            m.rho = args.rho
        m.training_mode = mode
        m.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: every op runs, the weights stay put
        models[mode] = m
    batches = [
        b
        for _, b in zip(
            range(4),
            directory_dataset(args.data_dir, "train", args.batch_size, training=True, crop_size=(args.crop, args.crop)),
        )
    ]
    for m in models.values():
        m.train_on_batch(*batches[0])
    times = {m: [] for m in models}
    shares = []
    for r in range(args.repeats):
        x, y = batches[r % len(batches)]
        for mode, m in models.items():
            t = time.perf_counter()
            logs = m.train_on_batch(x, y, return_dict=True)
            times[mode].append(time.perf_counter() - t)
            if mode == "cascade":
                shares.append([logs[f"stage{k}_share"] for k in (1, 2, 3)])
    model = models["cascade"]
    med = {m: float(np.median(v)) for m, v in times.items()}
    share = np.mean(shares, axis=0)
    print(f"batch {args.batch_size} of {args.crop}x{args.crop} crops, rho {model.rho:g}, median of {args.repeats}")
    print(
        f"initial (DSN) step {1000 * med['initial']:.0f} ms; cascade step {1000 * med['cascade']:.0f} ms; "
        f"ratio {med['cascade'] / med['initial']:.2f}; cascade share decided at stage 1/2/3 "
        + " / ".join(f"{100 * s:.1f}%" for s in share)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
