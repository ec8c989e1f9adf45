"""Every workaround that touches a Keras, TensorFlow or pytriton internal, in one place.

Each function says what breaks without it; `tests/test_compat.py` fails if the upstream
behaviour or name it relies on changes (keras 3.15, tensorflow 2.21, nvidia-pytriton 0.7.0).
"""


def reset_initial_epoch(model):
    """Forget the epoch `BackupAndRestore` restored.

    Keras keeps it in `model._initial_epoch` and every later `fit` of the same model starts
    there: after a resumed initial phase the cascade phase would run no epoch at all.
    """
    model._initial_epoch = None


def in_multi_worker_mode(strategy):
    """True for a MultiWorkerMirroredStrategy that really spans several workers.

    Keras reduces multi-worker logs with MEAN over axis 0, which scalar logs lack; the
    train step reshapes them to [1] in that case only. TF exposes the test only privately.
    """
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def backup_paths(callback):
    """`(latest weights, latest metadata, previous weights, previous metadata)` of a
    `keras.callbacks.BackupAndRestore` with `double_checkpoint=True`.

    The damaged-checkpoint fallback of `training.SafeBackupAndRestore` copies the previous
    checkpoint over the latest; Keras names them only in private attributes.
    """
    return (callback._weights_path, callback._training_metadata_path, callback._prev_weights_path,
            callback._prev_training_metadata_path)


def load_backup(callback):
    """Keras' own restore of a `BackupAndRestore` (raises when the checkpoint is damaged)."""
    return callback._load_model()


def set_backup_epoch(callback, epoch):
    """The epoch a `BackupAndRestore` believes it is at (0 after a fresh start)."""
    callback._current_epoch = epoch


def tritonserver_files(python_version):
    """`(server folder, Python-backend stub for this interpreter, server libs folder)` of pytriton.

    pytriton ships a real `tritonserver` but exposes its folder and the per-Python stubs only
    through these module attributes; `keras-lc serve` copies them into a private workspace.
    """
    from pytriton.triton import TRITONSERVER_DIST_DIR
    from pytriton.utils.distribution import get_libs_path, get_stub_path

    return TRITONSERVER_DIST_DIR, get_stub_path(python_version), get_libs_path()
