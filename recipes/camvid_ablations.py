"""The paper's Table 2 on CamVid: baseline, DSN, DSN + dropout, Model Cascade and LC at one budget.

Every variant is built and trained as a `keras-lc train` recipe describes it (default: recipes/camvid_cpu.toml,
the tiny backbone); the flags below override the recipe's values, as on the `keras-lc train` command line.

Run from the project root (each variant resumes where it stopped; finished ones are only evaluated):
    python recipes/camvid_ablations.py                      # all variants, then the table
    python recipes/camvid_ablations.py --variants lc,dsn    # some of them
    python recipes/camvid_ablations.py --variants "" --lc-rhos 0.985,0.9   # LC trained at other rho (Table 1)
Budget on the project's 2-core CPU: the camvid_cpu recipe's 45 epochs (30 initial + 15 cascade, ~65 s each)
per variant; the initial phase is shared by lc, dsn and dsn_dropout, so all five take ~3 h.
The camvid_cpu_2h recipe's budget instead (its initial phase can be shared by copying runs/camvid_2h's
initial.weights.h5 and history.json into <out>/initial, and the run itself into <out>/lc):
    python recipes/camvid_ablations.py --recipe recipes/camvid_cpu_2h.toml --out runs/ablations_2h --variants dsn
The flagship's one-head baseline (Table 2's first row at the EfficientNet-Lite0 budget, ~65 min):
    python recipes/camvid_ablations.py --recipe recipes/camvid_lite0_2h.toml --out runs/ablations_lite0 \
        --variants baseline
Output: <out>/<variant>/{model,best}.keras and <out>/table2.json.
"""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_lc.ablations import VARIANTS, train_variant  # noqa: E402
from keras_lc.config import TrainConfig  # noqa: E402
from keras_lc.metrics import evaluate_cascade  # noqa: E402
from keras_lc.training import dataset_info, datasets_for_config, model_for_config  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--recipe", default="recipes/camvid_cpu.toml", help="the keras-lc train recipe of every variant")
parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
parser.add_argument("--lc-rhos", default="", help="also train LC at these rho (comma-separated): Table 1 trained")
parser.add_argument("--report", action="store_true", help="only print the table of what has been trained")
parser.add_argument("--out", default="runs/ablations")
for flag, kind in (("--data-dir", str), ("--initial-epochs", int), ("--cascade-epochs", int), ("--lr-schedule", str),
                   ("--class-weights", str)):
    parser.add_argument(flag, type=kind, default=None, help="overrides the recipe's value")
args = parser.parse_args()

config, _ = TrainConfig.from_toml(args.recipe)
overrides = {k: v for k in ("data_dir", "initial_epochs", "cascade_epochs", "lr_schedule", "class_weights")
             if (v := getattr(args, k)) is not None}
config = TrainConfig.from_mapping({**dataclasses.asdict(config), **overrides}, source="camvid_ablations")
if config.time_budget:  # the variants are compared at one epoch budget, not one wall clock
    print(f"[ablations] the recipe's time_budget ({config.time_budget:g} min) is not used: every variant trains the "
          f"recipe's {config.initial_epochs} + {config.cascade_epochs} epochs", flush=True)
    config = dataclasses.replace(config, time_budget=0.0)
info = dataset_info(config)
train, val = datasets_for_config(config)


def build():
    keras.utils.set_random_seed(config.seed)  # every variant starts from the same initial weights
    model, weights = model_for_config(config, info)
    if weights:
        print(f"[ablations] loaded ImageNet weights from {weights}", flush=True)
    return model


table_file = Path(args.out) / "table2.json"
table = json.loads(table_file.read_text()) if table_file.exists() else {}
runs = [(v, v, config.rho) for v in args.variants.split(",") if v and not args.report]
runs += [("lc", f"lc_rho{r}", float(r)) for r in args.lc_rhos.split(",") if r and not args.report]
for variant, name, rho in runs:
    start = time.time()
    model, eval_rho = train_variant(variant, build, train, val, args.out, dataclasses.replace(config, rho=rho),
                                    name=name, verbose=2)
    row = {"rho": eval_rho, "train_s_this_call": round(time.time() - start)}
    best = Path(args.out) / name / "best.keras"
    for kind, m in (("final", model), ("best", keras.saving.load_model(best) if best.exists() else None)):
        if m is not None:
            result = evaluate_cascade(m, val, rho=eval_rho, class_names=info["names"])
            row[kind] = {key: result[key] for key in ("miou", "pixel_accuracy", "stage_share", "per_class_iou")}
    table[name] = row
    table_file.write_text(json.dumps(table, indent=1))
    print(f"[ablations] {name}: mIoU final {row['final']['miou']:.4f}"
          + (f", best epoch {row['best']['miou']:.4f}" if "best" in row else "") + f" at rho {eval_rho}", flush=True)


def last_epochs_miou(name, n=5):
    """Mean validation mIoU of the last n epochs of a run's last phase (as logged by fit, at its rho)."""
    history = json.loads((Path(args.out) / name / "history.json").read_text())
    values = list(history.values())[-1]["val_miou"][-n:]
    return sum(values) / len(values)


print("\n| variant | rho | val mIoU, final weights | best epoch | mean of last 5 epochs | decided at stage 1/2/3 |")
print("|---|---|---|---|---|---|")
for name, row in table.items():
    share = " / ".join(f"{100 * s:.1f}%" for s in row["final"]["stage_share"])
    best = f"{100 * row['best']['miou']:.2f}" if "best" in row else "-"
    print(f"| {name} | {row['rho']} | {100 * row['final']['miou']:.2f} | {best} | {100 * last_epochs_miou(name):.2f} "
          f"| {share} |")
