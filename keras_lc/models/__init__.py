"""Cascade models and backbones."""

# Every backbone module is imported here so that `import keras_lc` registers its layers with Keras
# (keras.models.load_model needs them; build_model alone would import them lazily).
from keras_lc.models import efficientnet_lite, inception_resnet_v2, resnet  # noqa: F401
from keras_lc.models.cascade import LayerCascade
from keras_lc.models.factory import BACKBONES, build_model
from keras_lc.models.folding import folded_batchnorm
from keras_lc.models.tiny import TinyRegionStage, tiny_stage1
from keras_lc.models.weights import load_imagenet_weights

__all__ = ["BACKBONES", "LayerCascade", "TinyRegionStage", "build_model", "folded_batchnorm", "load_imagenet_weights",
           "tiny_stage1"]
