"""Region convolution variants against a dense conv (im2col gather vs per-offset matmuls vs batched).

    python benchmarks/region_conv_variants.py

Prints ratio to dense at 15/30/50% active (blob regions), median of 15 alternating rounds, 2 threads.
"""
import numpy as np, tensorflow as tf, time, sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from region_conv import blob_region
from keras_lc.layers import RegionIndex
tf.config.threading.set_intra_op_parallelism_threads(2)
for (h, w, c, f, k, d) in [(90, 120, 96, 96, 3, 2), (64, 64, 128, 160, 7, 2)]:
  x = tf.random.normal([1, h, w, c]); ks = (1, k) if k == 7 else (k, k)
  kern = tf.random.normal([*ks, c, f])
  @tf.function
  def dense(x): return tf.nn.convolution(x, kern, padding="SAME", dilations=d)
  for frac in [0.15, 0.3, 0.5]:
    region = tf.constant(blob_region(h, w, frac))
    @tf.function
    def im2col(x, region):
        idx = RegionIndex(region)
        p = idx.gather_neighbourhoods(x, ks, (d, d))
        return idx.scatter(tf.matmul(p, tf.reshape(kern, [-1, f])))
    @tf.function
    def per_offset(x, region):
        idx = RegionIndex(region)
        nb = idx.neighbours(ks, (d, d))  # [N, kk]
        flat = tf.concat([tf.reshape(x, [-1, c]), tf.zeros([1, c])], 0)
        kk = kern.shape[0] * kern.shape[1]
        w2 = tf.reshape(kern, [kk, c, f])
        y = None
        for o in range(kk):
            t = tf.matmul(tf.gather(flat, nb[:, o]), w2[o])
            y = t if y is None else y + t
        return idx.scatter(y)
    @tf.function
    def gather_t(x, region):  # transposed gather: [kk, N, C] then batched matmul
        idx = RegionIndex(region)
        nb = idx.neighbours(ks, (d, d))
        flat = tf.concat([tf.reshape(x, [-1, c]), tf.zeros([1, c])], 0)
        kk = kern.shape[0] * kern.shape[1]
        g = tf.gather(flat, tf.transpose(nb))  # [kk, N, C]
        y = tf.reduce_sum(tf.matmul(g, tf.reshape(kern, [kk, c, f])), 0)
        return idx.scatter(y)
    fns = [("dense", dense, (x,)), ("im2col", im2col, (x, region)), ("per_offset", per_offset, (x, region)), ("batched", gather_t, (x, region))]
    for _, fn, a in fns: fn(*a)
    ts = {n: [] for n, *_ in fns}
    for _ in range(15):
        for n, fn, a in fns:
            t = time.perf_counter(); fn(*a).numpy(); ts[n].append(time.perf_counter() - t)
    md = {n: np.median(v) for n, v in ts.items()}
    print((h, w, c, f, ks, d), frac, " ".join(f"{n} {md[n]/md['dense']:.2f}" for n in md), f"dense {1000*md['dense']:.2f}ms")
