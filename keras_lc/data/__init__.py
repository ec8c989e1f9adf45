"""Datasets: procedural scenes for the demo and tests, and directory datasets (CamVid layout)."""

from keras_lc.data.augment import photometric_jitter, random_scale_crop_flip
from keras_lc.data.datasets import LAYOUTS, directory_dataset, list_pairs, read_classes, read_info, voc_colormap
from keras_lc.data.synthetic import class_names, synthetic, synthetic_arrays

__all__ = ["LAYOUTS", "read_info", "voc_colormap", "class_names", "directory_dataset", "list_pairs",
           "photometric_jitter", "random_scale_crop_flip", "read_classes", "synthetic", "synthetic_arrays"]
