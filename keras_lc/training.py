"""The paper's two-step schedule, resumable: initial (DSN) training, then cascade training."""

import contextlib
import csv
import json
import tempfile
from pathlib import Path

import keras

from keras_lc.distribute import is_chief


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
):
    """Train a LayerCascade: `initial_epochs` in "initial" mode, then `cascade_epochs` in "cascade" mode.

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

    Returns:
        dict `{phase: history dict}`: the epochs run by this call (a resumed
        phase lists only the epochs run after the resume).
    """
    cascade_learning_rate = learning_rate * 0.3 if cascade_learning_rate is None else cascade_learning_rate
    histories = {}
    for phase, epochs, lr in (
        ("initial", initial_epochs, learning_rate),
        ("cascade", cascade_epochs, cascade_learning_rate),
    ):
        history = train_phase(
            model, train_data, val_data, out_dir, phase, epochs, lr, training_mode=phase,
            save_freq=save_freq, tensorboard=tensorboard, callbacks=callbacks, strategy=strategy,
            optimizer=optimizer, lr_schedule=lr_schedule, keep_best=phase == "cascade", verbose=verbose,
        )
        if history is not None:
            histories[phase] = history
    model.training_mode = "cascade"
    if is_chief(strategy):
        model.save(Path(out_dir) / "model.keras")
    return histories


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
    Model Cascade).

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
    if lr_schedule == "cosine":
        steps = int(train_data.cardinality()) if hasattr(train_data, "cardinality") else -1
        if steps <= 0:
            raise ValueError("lr_schedule='cosine' needs a training dataset of known, finite length.")
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps * epochs)
    chief = is_chief(strategy)
    out = Path(out_dir)
    if chief:
        out.mkdir(parents=True, exist_ok=True)
    scratch = out if chief else Path(tempfile.mkdtemp(prefix="keras_lc_worker_"))
    done = out / f"{phase}.weights.h5"
    if done.exists():
        model.load_weights(done)
        if verbose:
            print(f"[keras-lc] {phase} phase already finished: loaded {done}")
        return None
    if verbose:
        print(f"[keras-lc] {phase} training: {epochs} epochs, lr {learning_rate:g}, rho {model.rho:g}")
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
    phase_callbacks = [keras.callbacks.BackupAndRestore(str(backup), save_freq=save_freq)]
    if chief:
        phase_callbacks.append(keras.callbacks.CSVLogger(str(epoch_log), append=True))
    if tensorboard and chief:
        phase_callbacks.append(keras.callbacks.TensorBoard(str(out / "logs" / phase), write_graph=False))
    if val_data is not None and keep_best and chief:
        best_so_far = max((row["val_miou"] for row in earlier if "val_miou" in row), default=None)
        phase_callbacks.append(  # after a resume, only an epoch better than the ones before it replaces best.keras
            keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_miou", mode="max",
                                            save_best_only=True, initial_value_threshold=best_so_far)
        )
    # BackupAndRestore leaves the restored epoch in `model._initial_epoch`, and Keras' fit starts every later
    # fit of the same model there: after a resumed initial phase the cascade phase would run no epoch at all.
    model._initial_epoch = None
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
        saved[phase] = {k: [row[k] for row in earlier if k in row] + v for k, v in history.items()}
        history_file.write_text(json.dumps(saved, indent=1))
        model.save_weights(done)
    return history


def _read_epoch_log(path):
    """Rows of a CSVLogger file as dicts of floats (the "epoch" column and "NA" cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "epoch" and v not in ("", "NA", None)}
                for row in csv.DictReader(f)]
