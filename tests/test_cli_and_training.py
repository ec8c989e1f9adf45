import json

import keras
import numpy as np
import pytest
from conftest import SMALL

from keras_lc import build_model
from keras_lc.cli import main
from keras_lc.data import synthetic
from keras_lc.training import train_cascade

DATA = ["--num-images", "8", "--image-size", "32", "--batch-size", "4", "--num-classes", "3"]


def test_train_evaluate_predict_cli(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--out", str(out), "--initial-epochs", "1", "--cascade-epochs", "1", "--val-images", "4",
          "--rho", "0.9", *DATA])
    assert (out / "model.keras").is_file() and (out / "best.keras").is_file()
    assert (out / "initial.weights.h5").is_file() and (out / "cascade.weights.h5").is_file()
    assert any((out / "logs" / "cascade").rglob("*tfevents*"))
    history = json.loads((out / "history.json").read_text())
    assert {"loss", "stage2_loss", "miou", "stage1_share", "val_miou"} <= set(history["cascade"])

    main(["evaluate", str(out / "model.keras"), "--json", str(tmp_path / "e.json"), *DATA])
    text = capsys.readouterr().out
    assert "mIoU" in text and "stage 1/2/3" in text and "background" in text
    result = json.loads((tmp_path / "e.json").read_text())
    assert {"miou", "per_class_iou", "pixel_accuracy", "stage_share"} <= set(result)
    assert sum(result["stage_share"]) == pytest.approx(1.0)

    main(["predict", str(out / "model.keras"), "--out", str(tmp_path / "png"), "--num-images", "2",
          "--image-size", "32"])
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 100 for p in pngs)
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # predict on user image files (the PNGs just written are valid images)
    main(["predict", str(out / "model.keras"), str(pngs[0]), "--out", str(tmp_path / "png2")])
    assert (tmp_path / "png2" / f"{pngs[0].stem}.png").is_file()


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        main(["evaluate", str(tmp_path / "missing.keras")])
    with pytest.raises(SystemExit):
        main(["train", "--rho", "1.5"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    model = build_model("tiny", num_classes=3, **SMALL)
    model.save(tmp_path / "m.keras")
    with pytest.raises(SystemExit, match="cannot decode"):
        main(["predict", str(tmp_path / "m.keras"), str(bad), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not found"):
        main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "nope.png"), "--out", str(tmp_path)])


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch, phase="cascade"):
        super().__init__()
        self.at_epoch = at_epoch
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        if self.model.training_mode == self.phase and epoch + 1 == self.at_epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """One run interrupted after cascade epoch 2 of 3 (initial phase done); each test resumes a copy."""
    folder = tmp_path_factory.mktemp("interrupted")
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_cascade(model, _train_data(), _val_data(), folder, initial_epochs=1, cascade_epochs=3,
                      callbacks=[_Interrupt(2)], tensorboard=False, verbose=0)
    return folder


def _train_data():
    return synthetic(8, 32, 32, num_classes=3, seed=0, batch_size=4)


def _val_data():
    return synthetic(4, 32, 32, num_classes=3, seed=1, batch_size=4)


def _copy(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_interrupted_training_resumes(interrupted_run, tmp_path):
    _copy(interrupted_run, tmp_path)
    data, val = _train_data(), _val_data()
    assert (tmp_path / "initial.weights.h5").is_file()
    assert not (tmp_path / "cascade.weights.h5").exists()
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    histories = train_cascade(fresh, data, val, tmp_path, initial_epochs=1, cascade_epochs=3,
                              tensorboard=False, verbose=0)
    assert "initial" not in histories  # finished phase: loaded, not rerun
    assert len(histories["cascade"]["loss"]) == 1  # epochs 1-2 restored from the backup, only epoch 3 runs
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x = np.zeros((1, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(loaded(x)["probs"], fresh(x)["probs"], atol=1e-6)


def test_resumed_initial_phase_leaves_the_cascade_phase_whole(tmp_path):
    # Keras keeps the epoch BackupAndRestore restored on the model; the next phase must not start there
    data = synthetic(8, 32, 32, num_classes=3, seed=0, batch_size=4)
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_cascade(model, data, None, tmp_path, initial_epochs=3, cascade_epochs=2,
                      callbacks=[_Interrupt(2, phase="initial")], tensorboard=False, verbose=0)
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    histories = train_cascade(fresh, data, None, tmp_path, initial_epochs=3, cascade_epochs=2,
                              tensorboard=False, verbose=0)
    assert len(histories["initial"]["loss"]) == 1  # epoch 3 only
    assert len(histories["cascade"]["loss"]) == 2  # both cascade epochs
    saved = json.loads((tmp_path / "history.json").read_text())
    assert len(saved["initial"]["loss"]) == 3 and len(saved["cascade"]["loss"]) == 2


def test_epoch_rerun_after_a_step_backup_is_logged_once(tmp_path):
    """Step-level backups (--save-every): an interruption after an epoch's log row but before the next backup
    reruns part of that epoch; the history keeps each epoch once (benchmarks/kill_loop.py found this)."""
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_cascade(model, _train_data(), None, tmp_path, initial_epochs=3, cascade_epochs=1, save_freq=3,
                      callbacks=[_Interrupt(2, phase="initial")], tensorboard=False, verbose=0)
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    train_cascade(fresh, _train_data(), None, tmp_path, initial_epochs=3, cascade_epochs=1, save_freq=3,
                  tensorboard=False, verbose=0)
    rows = (tmp_path / "logs" / "initial.csv").read_text().splitlines()[1:]
    epochs = [int(r.split(",")[0]) for r in rows]
    assert len(epochs) > 3 and sorted(set(epochs)) == [0, 1, 2]  # an epoch was logged twice ...
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["initial"]["loss"]) == 3  # ... and counted once


def test_resume_keeps_the_best_checkpoint_and_the_whole_history(interrupted_run, tmp_path):
    _copy(interrupted_run, tmp_path)
    data, val = _train_data(), _val_data()
    log = tmp_path / "logs" / "cascade.csv"
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and "val_miou" in lines[0]  # header + the two epochs before the interruption
    # pretend an epoch before the interruption was perfect: no later epoch may replace its best.keras
    column = lines[0].split(",").index("val_miou")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[column] = "1.0"
    log.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    best = (tmp_path / "best.keras").read_bytes()
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    train_cascade(fresh, data, val, tmp_path, initial_epochs=1, cascade_epochs=3, tensorboard=False, verbose=0)
    assert (tmp_path / "best.keras").read_bytes() == best
    history = json.loads((tmp_path / "history.json").read_text())["cascade"]
    assert history["val_miou"][:2] == [1.0, 1.0] and len(history["loss"]) == 3
    assert len(log.read_text().splitlines()) == 4  # the resumed epoch appended

    # a fresh run in the same folder (no backup left) starts a new log
    (tmp_path / "cascade.weights.h5").unlink()
    train_cascade(fresh, data, val, tmp_path, initial_epochs=1, cascade_epochs=1, tensorboard=False, verbose=0)
    assert len(log.read_text().splitlines()) == 2


def test_recipe_sets_defaults_and_flags_win(tmp_path, monkeypatch):
    import keras_lc.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)))
    recipe = tmp_path / "r.toml"
    recipe.write_text('data = "synthetic"\ninitial_epochs = 3\nrho = 0.9\nout = "x"\n')
    cli.main(["train", "--recipe", str(recipe), "--rho", "0.8"])
    assert seen["initial_epochs"] == 3 and seen["rho"] == 0.8 and seen["out"] == "x"
    recipe.write_text("epochz = 3\n")
    with pytest.raises(SystemExit, match="unknown keys: epochz"):
        cli.main(["train", "--recipe", str(recipe)])
    with pytest.raises(SystemExit, match="not found"):
        cli.main(["train", "--recipe", str(tmp_path / "none.toml")])


def test_shipped_recipes_parse():
    from pathlib import Path

    import keras_lc.cli as cli

    for recipe in sorted(Path(__file__).parents[1].glob("recipes/*.toml")):
        parser = cli.build_parser()
        args = parser.parse_args(cli._apply_recipe(parser, ["train", "--recipe", str(recipe)]))
        assert args.initial_epochs + args.cascade_epochs > 0 and args.out
        assert args.initial_epochs > 0 or args.init_weights  # a cascade-only recipe starts from a trained model


def test_train_flags_reach_the_library(tmp_path, monkeypatch):
    import keras_lc.cli as cli
    import keras_lc.training as training

    seen = {}
    monkeypatch.setattr(training, "train_cascade", lambda model, *a, **kw: seen.update(model=model, args=a, **kw))
    cli.main(["train", "--backbone", "irnet", "--block-counts", "1,1,1", "--num-images", "2", "--image-size", "32",
              "--save-every", "7", "--cascade-learning-rate", "1e-4", "--out", str(tmp_path)])
    assert [s.num_blocks for s in seen["model"].stages] == [1, 1, 1]
    assert seen["config"].save_every == 7 and seen["config"].cascade_learning_rate == 1e-4
    assert seen["config"].out == str(tmp_path)
    cli.main(["train", "--channels", "16", "--head-channels", "8", "--num-images", "2", "--image-size", "32",
              "--out", str(tmp_path)])
    assert [h.hidden_channels for h in seen["model"].heads] == [8, 8, 8]
    assert seen["model"].stages[1].channels == 16
    cli.main(["train", "--channels", "16", "--num-images", "2", "--image-size", "32", "--head", "aspp",
              "--aspp-rates", "1,2", "--loss-resolution", "input", "--loss-weights", "0.3,0.3,1",
              "--halo", "2", "--out", str(tmp_path)])
    assert seen["model"].heads[0].aspp_rates == (1, 2) and seen["model"].loss_resolution == "input"
    assert seen["model"].loss_weights == (0.3, 0.3, 1.0) and seen["model"].halo == 2
    with pytest.raises(SystemExit, match=r"loss_weights \(--loss-weights\) must be three"):
        cli.main(["train", "--loss-weights", "0,0,0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="aspp_rates needs head"):
        cli.main(["train", "--aspp-rates", "1,2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="halo must be at least 0"):
        cli.main(["train", "--halo", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--block-counts"):
        cli.main(["train", "--backbone", "irnet", "--block-counts", "a,b", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--imagenet-weights file not found"):
        cli.main(["train", "--backbone", "irnet", "--imagenet-weights", str(tmp_path / "no.h5"),
                  "--out", str(tmp_path)])


def test_cosine_schedule_decays_each_phase_to_zero(tmp_path):
    from conftest import SMALL

    from keras_lc import build_model
    from keras_lc.data import synthetic
    from keras_lc.training import train_phase

    keras.utils.set_random_seed(0)
    model = build_model("tiny", num_classes=4, rho=0.9, ignore_class=4, **SMALL)
    train = synthetic(8, 32, 32, 4, seed=0, batch_size=4)
    train_phase(model, train, None, tmp_path, "p", 2, 1e-2, lr_schedule="cosine", verbose=0)
    assert model.optimizer.iterations.numpy() == 4
    assert float(model.optimizer.learning_rate) < 1e-6  # 4 of 4 decay steps done
    with pytest.raises(ValueError, match="lr_schedule"):
        train_phase(model, train, None, tmp_path, "q", 1, 1e-2, lr_schedule="step", verbose=0)
    with pytest.raises(ValueError, match="known, finite length"):
        train_phase(model, train.repeat(), None, tmp_path, "r", 1, 1e-2, lr_schedule="cosine", verbose=0)


def _truncate(path, size=4096):
    data = path.read_bytes()
    path.write_bytes(data[:size])


@pytest.mark.parametrize("keep_previous", [True, False])
def test_damaged_resume_checkpoint_never_blocks_the_rerun(tmp_path, keep_previous):
    data = synthetic(8, 32, 32, num_classes=3, seed=0, batch_size=4)
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_cascade(model, data, None, tmp_path, initial_epochs=3, cascade_epochs=1,
                      callbacks=[_Interrupt(2, phase="initial")], tensorboard=False, verbose=0)
    backup = tmp_path / "backup" / "initial"
    latest = backup / "latest.weights.h5"
    # the file names are Keras' (BackupAndRestore with double_checkpoint): pinned here, relied on in training.py
    assert latest.is_file() and (backup / "latest.weights.h5.bkp").is_file()
    _truncate(latest)  # as a kill during the write leaves it
    if not keep_previous:
        (backup / "latest.weights.h5.bkp").unlink()
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.warns(UserWarning, match="resumed from the one before it" if keep_previous else "starts afresh"):
        histories = train_cascade(fresh, data, None, tmp_path, initial_epochs=3, cascade_epochs=1,
                                  tensorboard=False, verbose=0)
    # from the previous checkpoint (epoch 1) two epochs remain; afresh, all three run
    assert len(histories["initial"]["loss"]) == (2 if keep_previous else 3)
    assert (tmp_path / "model.keras").is_file()


def test_damaged_best_keras_is_repaired_and_files_are_written_atomically(interrupted_run, tmp_path):
    _copy(interrupted_run, tmp_path)
    data, val = _train_data(), _val_data()
    (tmp_path / "best.keras").write_bytes(b"")  # a kill while best.keras was written in place
    fresh = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    with pytest.warns(UserWarning, match="best.keras is damaged"):
        train_cascade(fresh, data, val, tmp_path, initial_epochs=1, cascade_epochs=3, tensorboard=False, verbose=0)
    keras.models.load_model(tmp_path / "best.keras")  # written again by the resumed epoch
    assert not list(tmp_path.glob(".*partial*"))  # no temporary file left behind


@pytest.mark.parametrize("line, message", [
    ('rho = "x"', "rho must be a number"), ("batch_size = 0", "batch_size must be at least 1"),
    ("initial_epochs = 1.5", "initial_epochs must be an integer"), ("initial_epochs = -1", "at least 0"),
    ("learning_rate = 0", "learning_rate must be at least"), ('backbone = "vgg"', "backbone must be one of"),
    ("warmup = 3", "unknown keys: warmup; valid keys: backbone, channels"),
])
def test_recipe_values_get_the_flag_checks(tmp_path, line, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(line + "\n")
    with pytest.raises(SystemExit, match=message):
        main(["train", "--recipe", str(recipe), "--out", str(tmp_path / "o")])


def test_config_from_python_and_flags_agree():
    from keras_lc.config import TrainConfig

    config = TrainConfig.from_mapping({"backbone": "irnet", "block_counts": "5,10,5", "rho": 1})
    assert config.block_counts == (5, 10, 5) and config.rho == 1.0
    assert config.backbone_kwargs() == {"block_counts": (5, 10, 5)}
    with pytest.raises(ValueError, match="output_stride applies to the efficientnet_lite"):
        TrainConfig(output_stride=8).backbone_kwargs()
    with pytest.raises(SystemExit):
        main(["train", "--batch-size", "0"])


def test_model_and_data_from_a_config():
    from keras_lc.config import TrainConfig
    from keras_lc.training import dataset_info, datasets_for_config, model_for_config

    config = TrainConfig(channels=16, num_classes=3, num_images=4, val_images=2, image_size=32, batch_size=2, rho=0.7)
    info = dataset_info(config)
    assert (info["num_classes"], info["ignore_class"]) == (3, 3)
    model, weights = model_for_config(config, info)
    assert weights is None and model.rho == pytest.approx(0.7) and model.num_classes == 3
    twin = build_model("tiny", num_classes=3, ignore_class=3, width=16, bottleneck_channels=16, head_channels=16)
    assert model.count_params() == twin.count_params()  # channels = 16 reached the backbone and the heads
    train, val = datasets_for_config(config)
    x, y = next(iter(train))
    assert x.shape == (2, 32, 32, 3) and y.shape[:3] == (2, 32, 32)
    assert sum(int(b[0].shape[0]) for b in val) == 2  # val_images validation scenes
    with pytest.raises(ValueError, match="needs a dataset with classes.json"):
        model_for_config(TrainConfig(class_weights="median"), dataset_info(TrainConfig()))
    with pytest.raises(ValueError, match="needs --data-dir"):
        dataset_info(TrainConfig(data="camvid"))
    with pytest.raises(ValueError, match="auto finds installed weights for efficientnet_lite"):
        model_for_config(TrainConfig(imagenet_weights="auto"), info)


def test_init_weights_start_from_a_trained_model(tmp_path):
    from keras_lc.config import TrainConfig
    from keras_lc.training import dataset_info, model_for_config

    config = TrainConfig(channels=16, num_classes=3, image_size=32)
    info = dataset_info(config)
    trained, _ = model_for_config(config, info)
    trained.set_weights([w + 0.01 for w in trained.get_weights()])  # not what a fresh build gives
    trained.save(tmp_path / "t.keras")
    trained.save_weights(tmp_path / "t.weights.h5")
    for path in ("t.keras", "t.weights.h5"):
        model, _ = model_for_config(TrainConfig(channels=16, num_classes=3, image_size=32,
                                                init_weights=str(tmp_path / path)), info)
        for a, b in zip(model.get_weights(), trained.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="--init-weights file not found"):
        model_for_config(TrainConfig(channels=16, num_classes=3, init_weights=str(tmp_path / "no.keras")), info)
    with pytest.raises(ValueError, match="does not fit this model"):
        model_for_config(TrainConfig(channels=8, num_classes=3, init_weights=str(tmp_path / "t.keras")), info)


def test_saved_models_hold_no_optimizer(tmp_path):
    data = synthetic(8, 32, 32, num_classes=3, seed=0, batch_size=4)
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    train_cascade(model, data, data, tmp_path, initial_epochs=1, cascade_epochs=1, tensorboard=False, verbose=0)
    for name in ("model.keras", "best.keras"):
        loaded = keras.models.load_model(tmp_path / name)
        assert getattr(loaded, "optimizer", None) is None
    x = np.zeros((1, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "model.keras")(x)["probs"], model(x)["probs"],
                               atol=1e-6)


def test_corrupt_keras_files_are_named_not_missing(tmp_path):
    model = build_model("tiny", num_classes=3, **SMALL)
    model.save(tmp_path / "m.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(SystemExit, match="junk.keras is not a valid .keras file"):
        main(["evaluate", str(tmp_path / "junk.keras")])
    data = bytearray((tmp_path / "m.keras").read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # a damaged weights member
    (tmp_path / "hurt.keras").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="hurt.keras is not a valid .keras file"):
        main(["evaluate", str(tmp_path / "hurt.keras")])


def test_train_cascade_takes_the_typed_config(tmp_path):
    from keras_lc.config import TrainConfig

    config = TrainConfig(initial_epochs=2, cascade_epochs=1, learning_rate=1e-3, lr_schedule="cosine",
                         out=str(tmp_path / "run"))
    model = build_model("tiny", num_classes=3, ignore_class=3, **SMALL)
    histories = train_cascade(model, _train_data(), None, tmp_path / "ignored", initial_epochs=9, config=config,
                              tensorboard=False, verbose=0)
    assert [len(histories[p]["loss"]) for p in ("initial", "cascade")] == [2, 1]
    assert (tmp_path / "run" / "model.keras").is_file() and not (tmp_path / "ignored").exists()
