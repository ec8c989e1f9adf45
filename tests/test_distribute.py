import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import SMALL

from keras_lc import build_model
from keras_lc.distribute import make_strategy, parse_tf_config, set_precision

TRAIN = ["train", "--num-images", "16", "--val-images", "8", "--image-size", "32", "--batch-size", "8",
         "--num-classes", "3", "--initial-epochs", "2", "--cascade-epochs", "1", "--rho", "0.7",
         "--learning-rate", "0.05", "--optimizer", "sgd"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(args, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-m", "keras_lc.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout):
    deadline = time.time() + timeout
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1, deadline - time.time()))
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs


def _weights(path):
    return keras.models.load_model(path).get_weights()


def test_two_workers_match_single_process(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        _launch([*TRAIN, "--strategy", "multi_worker", "--timeout", "180", "--out", str(tmp_path / "mw")],
                {"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]
    single = _launch([*TRAIN, "--out", str(tmp_path / "single")])
    codes, outputs = _wait([*workers, single], timeout=400)
    assert codes == [0, 0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert "2 replica(s)" in outputs[0]
    # only the chief wrote the model
    assert (tmp_path / "mw" / "model.keras").is_file()
    a, b = _weights(tmp_path / "mw" / "model.keras"), _weights(tmp_path / "single" / "model.keras")
    # Same seed, same global batch of 8 (4 per worker), synchronized BatchNorm and the loss divided by the
    # global pixel count: the runs differ only by the order of floating-point sums in the all-reduce
    # (~1e-7 relative per step, plus BatchNorm statistics summed in another order), which SGD with
    # momentum passes on nearly linearly: after 6 steps at lr 0.05 we measured 1.3e-5 on weights of
    # size ~0.1. We allow 1e-4, and ask the runs to agree 100x better than training moved the weights.
    # (Adam is not used here: its first step moves every weight by ±lr whatever the gradient's size,
    # so a near-zero gradient whose sign flips under that noise differs by 2·lr.)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    assert worst < 1e-4, worst
    moved = max(float(np.max(np.abs(x - y))) for x, y in zip(a, _weights_init(tmp_path)))
    assert moved > 100 * worst, (moved, worst)


def _weights_init(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("tiny", num_classes=3, rho=0.7, ignore_class=3)
    return model.get_weights()


def test_missing_worker_stops_with_error_not_hang(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    (code,), (out,) = _wait(
        [_launch([*TRAIN, "--strategy", "multi_worker", "--timeout", "10", "--out", str(tmp_path / "x")],
                 {"cluster": cluster, "task": {"type": "worker", "index": 0}})],
        timeout=300,
    )
    assert code == -9, out[-2000:]  # killed by the watchdog process
    assert "made no progress for 10 s" in out


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "needs TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', '"cluster"'),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
        ('{"cluster": {"worker": ["a:1"]}}', '"task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not in the cluster"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "out of range"),
    ],
)
def test_bad_tf_config(text, message, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match=message):
        parse_tf_config()
    with pytest.raises(ValueError, match=message):
        make_strategy("multi_worker")


def test_unknown_strategy_and_precision():
    with pytest.raises(ValueError, match="Unknown strategy"):
        make_strategy("parameter_server")
    with pytest.raises(ValueError, match="Unknown precision"):
        set_precision("float8")
    with pytest.raises(SystemExit):
        from keras_lc.cli import main

        main(["train", "--strategy", "horovod"])


def test_mirrored_strategy_trains_one_replica(tmp_path):
    from keras_lc.cli import main

    main([*TRAIN[:-6], "--initial-epochs", "1", "--cascade-epochs", "0", "--strategy", "mirrored",
          "--out", str(tmp_path)])
    assert (tmp_path / "model.keras").is_file()


@pytest.fixture
def restore_policy():
    yield
    set_precision("float32")


def test_bfloat16_keeps_rho_decisions(restore_policy):
    from keras_lc.data import synthetic_arrays

    images, labels = synthetic_arrays(8, 48, 48, num_classes=3, seed=5)
    keras.utils.set_random_seed(0)
    ref = build_model("tiny", num_classes=3, rho=0.9, ignore_class=3, **SMALL)
    ref.compile(optimizer=keras.optimizers.Adam(3e-3))
    ref.fit(images, labels, batch_size=8, epochs=15, verbose=0)  # confident enough for a real split
    set_precision("mixed_bfloat16")
    low = build_model("tiny", num_classes=3, rho=0.9, ignore_class=3, **SMALL)
    low.set_weights(ref.get_weights())
    assert low.stages[1].blocks[0].branch.conv.compute_dtype == "bfloat16"
    a, b = ref(images), low(images)
    assert b["stage1"].dtype == "float32"  # softmax and rho test in float32
    share = np.bincount(a["stage"].numpy().ravel(), minlength=4)[1:] / a["stage"].numpy().size
    assert share[0] < 0.99 and share[0] > 0.01, share  # a real split, not all at one stage
    changed = float(np.mean(a["stage"].numpy() != b["stage"].numpy()))
    # bfloat16 keeps 8 bits of mantissa: only pixels whose confidence lies within ~1% of rho can flip.
    assert changed <= 0.02, changed


def test_mixed_float16_fit_step(restore_policy):
    set_precision("mixed_float16")
    model = build_model("tiny", num_classes=3, rho=0.9, ignore_class=3, **SMALL)
    model.compile(optimizer="adam")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("uint8")
    y = np.random.default_rng(1).integers(0, 3, (2, 32, 32))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
