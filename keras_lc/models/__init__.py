"""Cascade models and backbones."""

from keras_lc.models.cascade import LayerCascade
from keras_lc.models.factory import BACKBONES, build_model
from keras_lc.models.tiny import TinyRegionStage, tiny_stage1
from keras_lc.models.weights import load_imagenet_weights

__all__ = ["BACKBONES", "LayerCascade", "TinyRegionStage", "build_model", "load_imagenet_weights", "tiny_stage1"]
