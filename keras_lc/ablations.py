"""The paper's Table 2 ablations at one budget: baseline, DSN, DSN + dropout, Model Cascade, LC.

Every variant gets `initial_epochs + cascade_epochs` epochs on the same backbone:

| variant | schedule | evaluated at |
|---|---|---|
| `baseline` | one head (stage 3's), `initial_epochs` at lr, then `cascade_epochs` at 0.3 lr | ρ = 1 |
| `dsn` | shared initial phase (all heads, all pixels), then `cascade_epochs` more of it at 0.3 lr | ρ = 1 |
| `dsn_dropout` | shared initial phase, then DSN, random pixels dropped from stage 2/3 losses at LC's ratio | ρ = 1 |
| `model_cascade` | stage k alone (earlier stages frozen, only the pixels they forward), a third of the budget | ρ |
| `lc` | shared initial phase, then cascade training at ρ, 0.3 lr | ρ |

The initial phase is trained once (in `<root>/initial`) and shared by dsn, dsn_dropout and lc,
exactly as `train_cascade` runs it. Every phase is resumable (see `train_phase`).
"""

import json
from pathlib import Path

from keras_lc.training import CASCADE_LR_FACTOR, train_phase

VARIANTS = ("lc", "dsn", "baseline", "model_cascade", "dsn_dropout")


def lc_label_keep(lc_dir):
    """LC's training-time keep ratios `(1, P(reach stage 2), P(reach stage 3))` from its history.json."""
    history = json.loads((Path(lc_dir) / "history.json").read_text())["cascade"]
    share1 = sum(history["stage1_share"]) / len(history["stage1_share"])
    share3 = sum(history["stage3_share"]) / len(history["stage3_share"])
    return (1.0, 1.0 - share1, share3)


def train_variant(variant, build, train_data, val_data, root, config, label_keep=None, name=None, verbose=2):
    """Train one variant of Table 2 into `<root>/<variant>` (resumable) and return the model.

    Args:
        variant: one of `VARIANTS`.
        build: a function of no arguments returning a fresh `LayerCascade`.
        train_data, val_data: `(images, labels)` datasets.
        root: folder of all variants (`<root>/initial` holds the shared initial phase).
        config: a `keras_lc.config.TrainConfig`; its budget (`initial_epochs`, `cascade_epochs`: every
            variant gets their sum), `learning_rate` (the initial phase's), `cascade_learning_rate`
            (later phases'; default 0.3× as `train_cascade`), `optimizer`, `lr_schedule` ("constant"
            or "cosine", for every phase, see `train_phase`) and `rho` (the LC threshold, for lc and
            model_cascade). Its `out` is not used: `root` is; nor its `time_budget` (the variants are
            compared at one epoch budget), which is refused.
        label_keep: for dsn_dropout, the 3 keep probabilities (default: LC's, read from
            `<root>/lc/history.json`).
        name: the run's folder under `root` (default: the variant), e.g. "lc_rho0.9" for
            LC trained at another ρ (the paper's Table 1 trains one LC per ρ).

    Returns:
        `(model, eval_rho)`: the trained model (final weights) and the ρ to evaluate it at.
        `<root>/<variant>/model.keras` holds the same; `best.keras` the best epoch of its
        last phase by validation mIoU.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
    if config.time_budget:
        raise ValueError("the ablations compare their variants at one epoch budget: time_budget is not used "
                         "there; set it to 0 (or drop it from the recipe)")
    root = Path(root)
    out = root / (name or variant)
    model = build()
    rho, initial_epochs, cascade_epochs = config.rho, config.initial_epochs, config.cascade_epochs
    learning_rate = config.learning_rate
    low_lr = config.cascade_learning_rate or CASCADE_LR_FACTOR * learning_rate
    model.rho = rho
    common = dict(lr_schedule=config.lr_schedule, optimizer=config.optimizer, verbose=verbose)  # every phase's

    def shared_initial():
        train_phase(model, train_data, val_data, root / "initial", "initial", initial_epochs, learning_rate,
                    training_mode="initial", **common)
        model.load_weights(root / "initial" / "initial.weights.h5")

    if variant == "lc":
        shared_initial()
        train_phase(model, train_data, val_data, out, "cascade", cascade_epochs, low_lr, keep_best=True, **common)
        eval_rho = rho
    elif variant in ("dsn", "dsn_dropout"):
        shared_initial()  # (before label dropout is set: the shared phase is plain DSN training)
        if variant == "dsn_dropout":
            model.label_keep = tuple(label_keep) if label_keep is not None else lc_label_keep(root / "lc")
        model.rho = 1.0
        train_phase(model, train_data, val_data, out, "cascade", cascade_epochs, low_lr, training_mode="initial",
                    keep_best=True, **common)
        eval_rho = 1.0
    elif variant == "baseline":
        model.loss_weights = (0.0, 0.0, 1.0)
        model.rho = 1.0
        train_phase(model, train_data, val_data, out, "initial", initial_epochs, learning_rate,
                    training_mode="initial", **common)
        train_phase(model, train_data, val_data, out, "final", cascade_epochs, low_lr, training_mode="initial",
                    keep_best=True, **common)
        eval_rho = 1.0
    else:  # model_cascade: stage k trained alone on what stages < k forward, those frozen
        total = initial_epochs + cascade_epochs
        budgets = [total // 3 + (1 if k < total % 3 else 0) for k in range(3)]
        for k in range(3):
            model.loss_weights = tuple(1.0 if j == k else 0.0 for j in range(3))
            for j in range(k):
                model.stages[j].trainable = False
                model.heads[j].trainable = False
            train_phase(model, train_data, val_data, out, f"stage{k + 1}", budgets[k], learning_rate,
                        training_mode="cascade", keep_best=k == 2, **common)
        for layer in (*model.stages, *model.heads):
            layer.trainable = True
        eval_rho = rho
    model.loss_weights, model.label_keep = (1.0, 1.0, 1.0), None
    model.training_mode = "cascade"
    model.save(out / "model.keras")
    return model, eval_rho
