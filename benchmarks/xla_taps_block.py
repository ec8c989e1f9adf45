"""One MBConv block (112 -> 672 -> 112 channels, 5x5 depthwise, the flagship's stage-2 shape on a 23x30 grid)
on a region's compact rows: the library's map path against the same block with its depthwise conv as 25 neighbour
gathers from the compact rows, compiled by XLA (`jit_compile=True`, which fuses the gathers into one loop), and
the plain dense block; random weights, blob regions of 30 / 50 / 100% (a throwaway check of whether XLA could
stand in for a fused region-depthwise kernel; not used by the library).

    python benchmarks/xla_taps_block.py

Each row: ms per call over 100 back-to-back calls, median of 5 alternating rounds; `err` is the XLA block's
largest difference from the map path.
"""
import time

import numpy as np
import tensorflow as tf

from keras_lc.benchmark import blob_region
from keras_lc.layers.region_index import RegionIndex

H, W, Ci, C, k = 23, 30, 112, 672, 5
rng = np.random.default_rng(0)
we, be = tf.constant(rng.normal(size=(Ci, C)).astype(np.float32) * 0.1), tf.zeros([C])
wp, bp = tf.constant(rng.normal(size=(C, Ci)).astype(np.float32) * 0.1), tf.zeros([Ci])
dk, bd = tf.constant(rng.normal(size=(k, k, C, 1)).astype(np.float32) * 0.1), tf.zeros([C])
x = tf.constant(rng.normal(size=(1, H, W, Ci)).astype(np.float32))


def dense_block(x):
    t = tf.nn.relu6(tf.nn.bias_add(tf.nn.conv2d(x, we[None, None], 1, "SAME"), be))
    t = tf.nn.relu6(tf.nn.bias_add(tf.nn.depthwise_conv2d(t, dk, [1,1,1,1], "SAME"), bd))
    return x + tf.nn.bias_add(tf.nn.conv2d(t, wp[None, None], 1, "SAME"), bp)
def taps_block(v, taps):
    t = tf.nn.relu6(tf.matmul(v, we) + be)
    padded = tf.concat([t, tf.zeros([1, C])], 0)
    kern = tf.reshape(dk, [k * k, C])
    out = None
    for i in range(k * k):
        term = tf.gather(padded, taps[:, i]) * kern[i]
        out = term if out is None else out + term
    t = tf.nn.relu6(out + bd)
    return v + tf.matmul(t, wp) + bp
def map_block(v, r):
    i = RegionIndex(r)
    t = tf.nn.relu6(tf.matmul(v, we) + be)
    t = i.gather(tf.nn.relu6(tf.nn.bias_add(tf.nn.depthwise_conv2d(i.scatter(t), dk, [1,1,1,1], "SAME"), bd)))
    return v + tf.matmul(t, wp) + bp
def loop(name, fn, args, n=200):  # back-to-back calls, then one sync
    fn(*args).numpy()
    t = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    out.numpy()
    return 1e3 * (time.perf_counter() - t) / n
for frac in (0.3, 0.5, 1.0):
    region = tf.constant(blob_region((1, H, W), frac))
    idx = RegionIndex(region)
    v, taps = idx.gather(x), idx.compact_neighbours((k, k), (1, 1))
    fx = tf.function(taps_block, jit_compile=True)
    ref = map_block(v, region)
    err = float(tf.reduce_max(tf.abs(fx(v, taps) - ref)))
    res = {n: [] for n in ("empty", "dense", "map", "taps XLA")}
    fns = {"empty": (tf.function(lambda v: v), (v,)), "dense": (tf.function(dense_block), (x,)),
           "map": (tf.function(map_block), (v, region)), "taps XLA": (fx, (v, taps))}
    for _ in range(5):
        for n, (f, a) in fns.items():
            res[n].append(loop(n, f, a, 100))
    med = {n: float(np.median(t)) for n, t in res.items()}
    print(f"frac {frac} N {int(v.shape[0])} err {err:.1e} " + " ".join(f"{n} {t:.3f}" for n, t in med.items()),
          f"| map/dense {med['map']/med['dense']:.2f} xla/dense {med['taps XLA']/med['dense']:.2f}")
