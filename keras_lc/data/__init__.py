"""Datasets: procedural scenes for the demo and tests."""

from keras_lc.data.synthetic import class_names, synthetic, synthetic_arrays

__all__ = ["class_names", "synthetic", "synthetic_arrays"]
