"""The Keras/TF/pytriton internals keras_lc._compat relies on still exist and behave as it assumes."""

import inspect

import keras
import pytest

from keras_lc import _compat


def test_backup_and_restore_internals(tmp_path):
    cb = keras.callbacks.BackupAndRestore(str(tmp_path), double_checkpoint=True)
    latest, latest_meta, prev, prev_meta = _compat.backup_paths(cb)
    assert latest.endswith("latest.weights.h5") and prev == latest + ".bkp" and prev_meta == latest_meta + ".bkp"
    assert callable(cb._load_model) and cb._current_epoch == 0
    assert "_initial_epoch" in inspect.getsource(keras.callbacks.BackupAndRestore)  # what reset_initial_epoch undoes


def test_model_internals_overridden_by_layer_cascade():
    from keras_lc import LayerCascade

    assert hasattr(keras.Model, "_maybe_symbolic_build")  # LayerCascade overrides it
    params = inspect.signature(keras.Model._maybe_symbolic_build).parameters
    assert {"iterator", "data_batch"} <= set(params)
    assert LayerCascade._maybe_symbolic_build is not keras.Model._maybe_symbolic_build


def test_multi_worker_test_exists():
    import tensorflow as tf

    assert hasattr(tf.distribute.MultiWorkerMirroredStrategy, "__init__")
    assert not _compat.in_multi_worker_mode(tf.distribute.get_strategy())
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert hasattr(CollectiveAllReduceExtended, "_in_multi_worker_mode")


def test_pytriton_files():
    pytest.importorskip("pytriton", reason="the [serve] extra is not installed")
    import sys
    from pathlib import Path

    server_dir, stub, libs = _compat.tritonserver_files(f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert (Path(server_dir) / "bin" / "tritonserver").exists() and Path(stub).exists() and Path(libs).is_dir()
