"""Region convolution variants against a dense conv (im2col gather vs per-offset matmuls vs batched vs tiles).

    python benchmarks/region_conv_variants.py [REPEATS]

Prints ratio to dense at 15/30/50% active (blob regions), median of 15 alternating rounds, 2 threads.
"""

import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, __import__("os").path.dirname(__file__))
from region_conv import blob_region

from keras_lc.layers import RegionIndex

tf.config.threading.set_intra_op_parallelism_threads(2)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
for h, w, c, f, k, d in [(90, 120, 96, 96, 3, 2), (64, 64, 128, 160, 7, 2)]:
    x = tf.random.normal([1, h, w, c])
    ks = (1, k) if k == 7 else (k, k)
    kern = tf.random.normal([*ks, c, f])

    @tf.function
    def dense(x):
        return tf.nn.convolution(x, kern, padding="SAME", dilations=d)

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

        def make_tiles(t):
            ph, pw = d * (ks[0] // 2), d * (ks[1] // 2)
            nty, ntx = -(-h // t), -(-w // t)
            # window pixel offsets of one tile with its halo, in the padded map
            wy = tf.range(t + 2 * ph)[:, None]
            wx = tf.range(t + 2 * pw)[None, :]
            pad_w = ntx * t + 2 * pw

            @tf.function
            def tiles(x, region):  # dense conv on the tiles that touch the region, halo included
                xp = tf.pad(x, [[0, 0], [ph, nty * t - h + ph], [pw, ntx * t - w + pw], [0, 0]])
                rp = tf.pad(region[0], [[0, nty * t - h], [0, ntx * t - w]])
                active = tf.reduce_any(tf.reshape(rp, [nty, t, ntx, t]), axis=[1, 3])
                tc = tf.cast(tf.where(active), tf.int32)  # [nt, 2]
                flat = (tc[:, 0, None, None] * t + wy) * pad_w + (tc[:, 1, None, None] * t + wx)  # [nt, t+2ph, t+2pw]
                win = tf.gather(tf.reshape(xp, [-1, c]), flat)  # [nt, t+2ph, t+2pw, c]
                y = tf.nn.convolution(win, kern, padding="VALID", dilations=d)  # [nt, t, t, f]
                out = tf.scatter_nd(tc, y, [nty, ntx, t, t, f])
                out = tf.reshape(tf.transpose(out, [0, 2, 1, 3, 4]), [1, nty * t, ntx * t, f])[:, :h, :w]
                return out * tf.cast(region[..., None], out.dtype)

            return tiles

        fns = [
            ("dense", dense, (x,)),
            ("tiles8", make_tiles(8), (x, region)),
            ("tiles16", make_tiles(16), (x, region)),
            ("im2col", im2col, (x, region)),
            ("per_offset", per_offset, (x, region)),
            ("batched", gather_t, (x, region)),
        ]
        ref = (dense(x) * tf.cast(region[..., None], tf.float32)).numpy()
        for n, fn, a in fns[1:]:  # every variant must equal the masked dense conv before it is timed
            np.testing.assert_allclose(fn(*a).numpy(), ref, atol=1e-3 * np.abs(ref).max(), err_msg=n)
        ts = {n: [] for n, *_ in fns}
        for _ in range(REPEATS):
            for n, fn, a in fns:
                t = time.perf_counter()
                fn(*a).numpy()
                ts[n].append(time.perf_counter() - t)
        md = {n: np.median(v) for n, v in ts.items()}
        print(
            (h, w, c, f, ks, d),
            frac,
            " ".join(f"{n} {md[n] / md['dense']:.2f}" for n in md),
            f"dense {1000 * md['dense']:.2f}ms",
        )
