"""What the automatic dense/region switch costs: dense network vs the cascade at rho 1 and 0.95.

python benchmarks/rho1_overhead.py [MODEL]   (default saved_models/camvid_lc.keras; 8 CamVid val frames)
"""

import glob
import sys
import time

import keras
import numpy as np
import tensorflow as tf

m = keras.models.load_model(sys.argv[1] if len(sys.argv) > 1 else "saved_models/camvid_lc.keras")
ims = [
    tf.io.decode_png(tf.io.read_file(p), channels=3).numpy()
    for p in sorted(glob.glob("../shared/data/camvid/val/images/*.png"))[:8]
]
for b in (1, 8):
    x = tf.constant(np.stack(ims[:b]))
    fa = tf.function(lambda x: m.forward_details(x, rho=1.0, dense=True)["labels"])
    fb = tf.function(lambda x: m.forward_details(x, rho=tf.constant(1.0), dense=False)["labels"])
    fc = tf.function(lambda x: m.forward_details(x, rho=tf.constant(0.95), dense=False)["labels"])
    for f in (fa, fb, fc):
        f(x)
    ts = {"dense": [], "rho1": [], "rho0.95": []}
    for _ in range(12 if b == 1 else 5):
        for n, f in (("dense", fa), ("rho1", fb), ("rho0.95", fc)):
            t = time.perf_counter()
            f(x).numpy()
            ts[n].append(time.perf_counter() - t)
    md = {n: np.median(v) for n, v in ts.items()}
    print("batch", b, " ".join(f"{n} {1000 * v:.1f}ms ({md['dense'] / v:.2f}x)" for n, v in md.items()))
