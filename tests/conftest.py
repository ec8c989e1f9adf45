import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SMALL = dict(width=16, stem_channels=8, stage1_blocks=1, bottleneck_channels=16,
             stage2_dilations=(2,), stage3_dilations=(2, 4), head_channels=16)


def blob_region(shape, fraction, seed):
    """Blob-shaped bool regions [B, H, W] covering about `fraction` of the pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(shape[0], shape[1], shape[2], 1)).astype(np.float32)
    smooth = tf.nn.avg_pool2d(noise, 5, 1, "SAME").numpy()[..., 0]
    smooth = tf.nn.avg_pool2d(smooth[..., None], 5, 1, "SAME").numpy()[..., 0]
    threshold = np.quantile(smooth, 1.0 - fraction)
    return smooth >= threshold


@pytest.fixture(scope="session")
def small_model():
    from keras_lc import build_model

    tf.keras.utils.set_random_seed(0)
    return build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None, **SMALL)


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
