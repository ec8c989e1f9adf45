import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SMALL = dict(width=16, stem_channels=8, stage1_blocks=1, bottleneck_channels=16,
             stage2_dilations=(2,), stage3_dilations=(2, 4), head_channels=16)


@pytest.fixture(scope="session")
def small_model():
    from keras_lc import build_model

    tf.keras.utils.set_random_seed(0)
    return build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, dense_threshold=None, **SMALL)


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(2, 32, 40, 3)).astype(np.uint8)
