"""Side by side, alternating: the SavedModel save with the Keras object attached to the module (before commit
ae1f942) and with the variables alone (`export.write_savedmodel`), plus a check that both serve the same outputs.

    python benchmarks/export_save_time.py saved_models/camvid_lc.keras --repeats 2
"""

import argparse
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_lc  # noqa: F401  (registers the layers)
from keras_lc import export


def save_with_keras_object(model, path):
    """The save as it was: the Keras model attached to the module, so the SavedModel re-traces its layers."""
    module = tf.Module()
    module.model = model
    fns = export.serving_functions(model)
    for name, fn in fns.items():
        setattr(module, name, fn)
    tf.saved_model.save(module, str(path), signatures=fns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = keras.saving.load_model(args.model)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (1, 360, 480, 3), dtype=np.uint8))
    savers = {"keras object": save_with_keras_object, "variables only": export.write_savedmodel}
    seconds = {name: [] for name in savers}
    outputs = {}
    for _ in range(args.repeats):
        for name, save in savers.items():
            folder = tempfile.mkdtemp()
            start = time.perf_counter()
            save(model, folder)
            seconds[name].append(time.perf_counter() - start)
            outputs[name] = tf.saved_model.load(folder).signatures["serving_default"](images=images)
    for name, values in seconds.items():
        print(f"{name:>15}: " + " ".join(f"{v:.2f} s" for v in values))
    old, new = outputs.values()
    print("same outputs:", {key: bool(np.array_equal(old[key].numpy(), new[key].numpy())) for key in old})


if __name__ == "__main__":
    main()
