"""The paper's two-step schedule, resumable: initial (DSN) training, then cascade training."""

import json
from pathlib import Path

import keras


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
    verbose=1,
):
    """Train a LayerCascade: `initial_epochs` in "initial" mode, then `cascade_epochs` in "cascade" mode.

    Everything lands in `out_dir`: `model.keras` (final), `best.keras` (best
    validation mIoU of the cascade phase, when `val_data` is given),
    `<phase>.weights.h5` (the end of each phase), `backup/<phase>/` (resume state,
    every epoch or every `save_freq` steps), `logs/<phase>/` (TensorBoard: per-stage
    losses, mIoU, share decided per stage) and `history.json`.

    Rerunning the same call after an interruption resumes: a finished phase is
    loaded from its weights file and skipped, an unfinished one continues from its
    backup (`keras.callbacks.BackupAndRestore`).

    `callbacks` are extra Keras callbacks for both phases.

    Returns:
        dict `{phase: history dict}`: the epochs run by this call (a resumed
        phase lists only the epochs run after the resume).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cascade_learning_rate = learning_rate * 0.3 if cascade_learning_rate is None else cascade_learning_rate
    histories = {}
    history_file = out / "history.json"
    for phase, epochs, lr in (
        ("initial", initial_epochs, learning_rate),
        ("cascade", cascade_epochs, cascade_learning_rate),
    ):
        if epochs <= 0:
            continue
        done = out / f"{phase}.weights.h5"
        if done.exists():
            model.load_weights(done)
            if verbose:
                print(f"[keras-lc] {phase} phase already finished: loaded {done}")
            continue
        if verbose:
            print(f"[keras-lc] {phase} training: {epochs} epochs, lr {lr:g}, rho {model.rho:g}")
        model.training_mode = phase
        model.compile(optimizer=keras.optimizers.Adam(lr))
        phase_callbacks = [keras.callbacks.BackupAndRestore(str(out / "backup" / phase), save_freq=save_freq)]
        if tensorboard:
            phase_callbacks.append(keras.callbacks.TensorBoard(str(out / "logs" / phase), write_graph=False))
        if val_data is not None and phase == "cascade":
            phase_callbacks.append(
                keras.callbacks.ModelCheckpoint(
                    str(out / "best.keras"), monitor="val_miou", mode="max", save_best_only=True
                )
            )
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            callbacks=phase_callbacks + list(callbacks or []),
            shuffle=False,  # a tf.data pipeline shuffles itself
            verbose=verbose,
        )
        histories[phase] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        saved = json.loads(history_file.read_text()) if history_file.exists() else {}
        saved[phase] = histories[phase]
        history_file.write_text(json.dumps(saved, indent=1))
        model.save_weights(done)
    model.training_mode = "cascade"
    model.save(out / "model.keras")
    return histories
