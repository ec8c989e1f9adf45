"""tf.distribute strategies and mixed precision for training, with clear errors and bounded waits."""

import json
import os
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def parse_tf_config(text=None):
    """Validate `TF_CONFIG` (JSON with `cluster` and `task`) and return it as a dict.

    Raises a ValueError naming the problem: not JSON, no worker list, a task type or
    index that is not in the cluster, an address without a port.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError(
            "--strategy multi_worker needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e.msg} at char {e.pos}): {text[:200]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError('TF_CONFIG needs a "cluster" object, e.g. {"worker": ["host1:port", "host2:port"]}.')
    cluster = config["cluster"]
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError('TF_CONFIG "cluster" lists no "worker" (or "chief") addresses.')
    for role, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f'TF_CONFIG cluster "{role}" must be a non-empty list of "host:port".')
        for a in addresses:
            host, _, port = str(a).rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f'TF_CONFIG address {a!r} in "{role}" is not "host:port".')
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError('TF_CONFIG needs a "task" object with "type" and "index", '
                         'e.g. {"type": "worker", "index": 0}.')
    if task["type"] not in cluster:
        raise ValueError(f'TF_CONFIG task type {task["type"]!r} is not in the cluster ({sorted(cluster)}).')
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(
            f'TF_CONFIG task index {task["index"]!r} is out of range for {len(cluster[task["type"]])} '
            f'"{task["type"]}" addresses.'
        )
    return config


def make_strategy(name="default", timeout_s=120):
    """A `tf.distribute` strategy by name: "default", "mirrored" or "multi_worker".

    "multi_worker" is `MultiWorkerMirroredStrategy` with the cluster from `TF_CONFIG`;
    every collective (gradient all-reduce, synchronized BatchNorm, the global pixel
    count of the loss) times out after `timeout_s`, so a dead worker ends the run
    with an error instead of a hang.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    parse_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout_s))
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_chief(strategy=None):
    """True on the worker that writes checkpoints, logs and the final model."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def set_precision(name):
    """Set the Keras global dtype policy: "float32", "mixed_float16" or "mixed_bfloat16".

    Heads compute their softmax and the ρ test in float32 whatever the policy; with
    mixed_float16, `compile` wraps the optimizer in a LossScaleOptimizer.
    """
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision {name!r}; choose one of {PRECISIONS}.")
    keras.mixed_precision.set_dtype_policy(name)


class ProgressWatchdog:
    """Stops the process if training makes no progress for `timeout_s` seconds.

    A multi-worker run blocks inside TensorFlow's collectives, holding the GIL, when a
    worker is missing (group setup waits for everyone before any timeout applies) or
    dies. So the watchdog is a separate small process: the trainer sends it a byte
    after every batch; if none comes in time it prints what happened and kills the
    trainer (which then exits with -9 / 137). It exits by itself when the trainer
    closes the pipe.
    """

    def __init__(self, timeout_s, what="multi-worker training"):
        self.timeout_s = float(timeout_s)
        self.what = what
        self._proc = None

    def start(self):
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            # keras_lc/watchdog.py, by path: `-m keras_lc.watchdog` would import keras_lc (and TensorFlow) first
            [sys.executable, str(Path(__file__).with_name("watchdog.py")), str(os.getpid()), str(self.timeout_s),
             self.what],
            stdin=subprocess.PIPE,
        )

    def kick(self):
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.stdin.write(b".")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def stop(self):
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.wait(timeout=10)
            self._proc = None

    def callback(self):
        """A Keras callback that kicks the watchdog after every train/test batch."""
        watchdog = self

        class _Kick(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                watchdog.kick()

            def on_test_batch_end(self, batch, logs=None):
                watchdog.kick()

            def on_epoch_end(self, epoch, logs=None):
                watchdog.kick()

        return _Kick()
