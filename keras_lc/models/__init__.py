"""Cascade models and backbones."""

from keras_lc.models.cascade import LayerCascade
from keras_lc.models.factory import BACKBONES, build_model
from keras_lc.models.tiny import TinyRegionStage, tiny_stage1

__all__ = ["BACKBONES", "LayerCascade", "TinyRegionStage", "build_model", "tiny_stage1"]
