"""keras_lc: Deep Layer Cascade (Li et al., CVPR 2017) for Keras 3 / TensorFlow.

Public names: `build_model`, `LayerCascade`, and the subpackages `layers`, `models`,
`data`, `losses`, `metrics`. Importing the package registers every layer with Keras,
so `keras.models.load_model("m.keras")` works after `import keras_lc`.
"""

__version__ = "0.1.0"

from keras_lc import data, layers, losses, metrics, models  # noqa: E402
from keras_lc.models import LayerCascade, build_model, load_imagenet_weights  # noqa: E402

__all__ = ["LayerCascade", "__version__", "build_model", "data", "layers", "load_imagenet_weights", "losses",
           "metrics", "models"]
