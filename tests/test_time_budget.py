"""`time_budget`: a run on the wall clock (WallClockSchedule), on a fake clock that moves 10 s a step."""

import contextlib
import json
import math

import keras
import pytest
from conftest import SMALL

import keras_lc.training as training
from keras_lc import build_model
from keras_lc.data import synthetic
from keras_lc.training import train_cascade, train_phase


class _FakeClock:
    def __init__(self, start=0.0):
        self.now = start

    def __call__(self):
        return self.now


class _Step(keras.callbacks.Callback):
    """Moves the fake clock 10 s during each step; records the rate each step ran with."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.rates = clock, []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))
        self.clock.now += 10.0


class _InterruptAfterEpoch(keras.callbacks.Callback):
    """Interrupts the run at the end of epoch `last` (None: the first epoch that ends)."""

    def __init__(self, last=None):
        super().__init__()
        self.last = last

    def on_epoch_end(self, epoch, logs=None):
        if self.last is None or epoch == self.last:
            raise KeyboardInterrupt


def _model():
    keras.utils.set_random_seed(0)
    return build_model("tiny", num_classes=3, rho=0.9, ignore_class=3, **SMALL)


def _data():
    return synthetic(8, 32, 32, num_classes=3, seed=0, batch_size=4)  # 2 steps an epoch


@pytest.fixture
def clock(monkeypatch):
    fake = _FakeClock()
    monkeypatch.setattr(training, "_clock", fake)
    return fake


def test_a_generous_budget_is_cosine_decay_over_the_steps(tmp_path, clock):
    step = _Step(clock)
    train_phase(_model(), _data(), None, tmp_path, "p", 3, 1e-2, lr_schedule="cosine", verbose=0,
                time_allowance=1e6, callbacks=[step], tensorboard=False)
    # time 0..50 s of 1e6: the steps govern, and the rates are CosineDecay's
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * i / 6)) for i in range(6)]
    assert step.rates == pytest.approx(expected, rel=1e-6)
    assert json.loads((tmp_path / "clock.json").read_text())["p"] == pytest.approx(60.0)


def test_the_clock_stops_a_phase_and_decays_its_rate(tmp_path, clock):
    step = _Step(clock)
    model = _model()
    history = train_phase(model, _data(), None, tmp_path, "p", 10, 1e-2, lr_schedule="cosine", verbose=0,
                          time_allowance=55.0, callbacks=[step], tensorboard=False)
    # 20 steps allowed; each takes 10 s, and a step that would end past 55 s is not started
    assert int(model.optimizer.iterations) == 5 and len(history["loss"]) == 3  # epochs 1, 2 and half of 3
    assert step.rates == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * t / 55)) for t in (0, 10, 20, 30, 40)])
    assert history["phase_minutes"][-1] == pytest.approx(50 / 60)
    assert (tmp_path / "p.weights.h5").is_file()


def test_a_resumed_phase_continues_its_clock(tmp_path, clock):
    steps = []
    for attempt in range(2):  # interrupted after epoch 1 (2 steps, 20 s), then rerun on a clock that jumped
        step = _Step(clock)
        steps.append(step)
        clock.now = 1000.0 * attempt
        model = _model()
        extra = [step] + ([_InterruptAfterEpoch()] if attempt == 0 else [])
        try:
            train_phase(model, _data(), None, tmp_path, "p", 10, 1e-2, lr_schedule="cosine", verbose=0,
                        time_allowance=55.0, callbacks=extra, tensorboard=False)
        except KeyboardInterrupt:
            assert attempt == 0
    assert int(model.optimizer.iterations) == 5  # the same 5 steps as an uninterrupted run
    rates = steps[0].rates + steps[1].rates
    assert rates == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * t / 55)) for t in (0, 10, 20, 30, 40)])


def test_a_phase_started_afresh_after_a_damaged_backup_restarts_its_clock(tmp_path, clock):
    steps = []
    for attempt in range(2):  # 4 epochs (80 s), interrupted, its backups damaged; rerun from scratch on 55 s
        step = _Step(clock)
        steps.append(step)
        clock.now = 1000.0 * attempt
        model = _model()
        extra = [step] + ([_InterruptAfterEpoch(3)] if attempt == 0 else [])
        if attempt == 1:
            backup = tmp_path / "backup" / "p"
            (backup / "latest.weights.h5").write_bytes(b"cut")
            (backup / "latest.weights.h5.bkp").unlink()
        try:
            with contextlib.ExitStack() as stack:
                if attempt == 1:
                    stack.enter_context(pytest.warns(UserWarning, match="starts afresh"))
                history = train_phase(model, _data(), None, tmp_path, "p", 10, 1e-2, lr_schedule="cosine",
                                      verbose=0, time_allowance=(1e6, 55.0)[attempt], callbacks=extra,
                                      tensorboard=False)
        except KeyboardInterrupt:
            assert attempt == 0
    # the rerun is an uninterrupted run: the whole 55 s, its rates, and only its own epochs in the history
    assert len(steps[0].rates) == 8 and int(model.optimizer.iterations) == 5
    assert steps[1].rates == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * t / 55)) for t in (0, 10, 20, 30, 40)])
    assert len(history["loss"]) == 3
    saved = json.loads((tmp_path / "history.json").read_text())["p"]
    assert saved["phase_minutes"] == pytest.approx([20 / 60, 40 / 60, 50 / 60])


class _Validation(keras.callbacks.Callback):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_test_begin(self, logs=None):
        self.clock.now += 30.0  # a validation pass takes 30 s


def test_the_phases_share_the_budget_by_their_epochs(tmp_path, clock):
    val = synthetic(4, 32, 32, num_classes=3, seed=1, batch_size=4)
    train_cascade(_model(), _data(), val, tmp_path, initial_epochs=6, cascade_epochs=2, learning_rate=1e-2,
                  lr_schedule="cosine", tensorboard=False, verbose=0, time_budget=1.8,  # minutes: 108 s
                  callbacks=[_Step(clock), _Validation(clock)])
    spent = json.loads((tmp_path / "clock.json").read_text())
    # reserve 1% + 10 s; the initial phase's share is 6/8 of the rest, 72.7 s: epoch 1 (2 steps and the 30-s
    # validation) ends at 50 s, and another step with its validation would end at 90 s
    assert spent["initial"] == pytest.approx(50.0) and spent["validation_s"] == pytest.approx(30.0)
    # the cascade phase gets what is left, 46.9 s, and knows the validation's time before its own first one:
    # one step (10 s), then the validation, 40 s in all (two steps would have ended at 50 s)
    assert spent["cascade"] == pytest.approx(40.0)
    assert sum(spent[p] for p in ("initial", "cascade")) <= 108.0 - 11.08
    assert (tmp_path / "model.keras").is_file()


def test_time_budget_errors_and_flag(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="time_budget must be a positive number of minutes"):
        train_cascade(_model(), _data(), None, tmp_path, initial_epochs=1, cascade_epochs=0, time_budget=-5,
                      tensorboard=False, verbose=0)
    monkeypatch.setattr(training, "in_multi_worker_mode", lambda strategy: True)
    with pytest.raises(ValueError, match="multi-worker"):
        train_cascade(_model(), _data(), None, tmp_path, initial_epochs=1, cascade_epochs=0, time_budget=60,
                      strategy=object(), tensorboard=False, verbose=0)

    import keras_lc.cli as cli

    seen = {}
    monkeypatch.setattr(training, "train_cascade", lambda model, *a, **kw: seen.update(kw))
    cli.main(["train", "--time-budget", "90", "--num-images", "2", "--image-size", "32", "--out", str(tmp_path)])
    assert seen["config"].time_budget == 90.0 and seen["budget_start"] <= training.time.monotonic()
    with pytest.raises(SystemExit, match="time_budget must be at least 0"):
        cli.main(["train", "--time-budget", "-1", "--out", str(tmp_path)])
