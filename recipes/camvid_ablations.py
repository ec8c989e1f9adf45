"""The paper's Table 2 on CamVid: baseline, DSN, DSN + dropout, Model Cascade and LC at one budget.

Run from the project root (each variant resumes where it stopped; finished ones are only evaluated):
    python recipes/camvid_ablations.py                      # all variants, then the table
    python recipes/camvid_ablations.py --variants lc,dsn    # some of them
    python recipes/camvid_ablations.py --variants "" --lc-rhos 0.985,0.9   # LC trained at other rho (Table 1)
Budget on the project's 2-core CPU: the camvid_cpu recipe's 45 epochs (30 initial + 15 cascade, ~65 s each)
per variant; the initial phase is shared by lc, dsn and dsn_dropout, so all five take ~3 h.
The camvid_cpu_2h recipe's budget instead (its initial phase can be shared by copying runs/camvid_2h's
initial.weights.h5 and history.json into <out>/initial, and the run itself into <out>/lc):
    python recipes/camvid_ablations.py --out runs/ablations_2h --initial-epochs 60 --cascade-epochs 30 \
        --lr-schedule cosine --class-weights median-sqrt --variants dsn
Output: runs/ablations/<variant>/{model,best}.keras and runs/ablations/table2.json.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_lc import build_model  # noqa: E402
from keras_lc.ablations import VARIANTS, train_variant  # noqa: E402
from keras_lc.data import directory_dataset, read_info  # noqa: E402
from keras_lc.data.datasets import CLASS_WEIGHT_POWERS, median_frequency_weights  # noqa: E402
from keras_lc.metrics import evaluate_cascade  # noqa: E402

# The settings of recipes/camvid_cpu.toml.
DATA_DIR = "../shared/data/camvid"
WIDTH, CROP, BATCH, SEED = 96, 256, 8, 0
INITIAL_EPOCHS, CASCADE_EPOCHS, LEARNING_RATE, RHO = 30, 15, 2e-3, 0.95

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
parser.add_argument("--lc-rhos", default="", help="also train LC at these rho (comma-separated): Table 1 trained")
parser.add_argument("--report", action="store_true", help="only print the table of what has been trained")
parser.add_argument("--data-dir", default=DATA_DIR)
parser.add_argument("--out", default="runs/ablations")
parser.add_argument("--initial-epochs", type=int, default=INITIAL_EPOCHS)
parser.add_argument("--cascade-epochs", type=int, default=CASCADE_EPOCHS)
parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
parser.add_argument("--class-weights", default="none", choices=["none", *CLASS_WEIGHT_POWERS])
args = parser.parse_args()

info = read_info(args.data_dir, "camvid")
train = directory_dataset(args.data_dir, "train", BATCH, training=True, crop_size=(CROP, CROP), seed=SEED)
val = directory_dataset(args.data_dir, "val", BATCH)
class_weights = None  # as `keras-lc train --class-weights` sets them
if args.class_weights != "none":
    class_weights = median_frequency_weights(info, CLASS_WEIGHT_POWERS[args.class_weights])


def build():
    keras.utils.set_random_seed(SEED)  # every variant starts from the same initial weights
    return build_model("tiny", num_classes=info["num_classes"], rho=RHO, ignore_class=info["ignore_class"],
                       width=WIDTH, bottleneck_channels=WIDTH, head_channels=WIDTH, class_weights=class_weights)


table_file = Path(args.out) / "table2.json"
table = json.loads(table_file.read_text()) if table_file.exists() else {}
runs = [(v, v, RHO) for v in args.variants.split(",") if v and not args.report]
runs += [("lc", f"lc_rho{r}", float(r)) for r in args.lc_rhos.split(",") if r and not args.report]
for variant, name, rho in runs:
    start = time.time()
    model, eval_rho = train_variant(variant, build, train, val, args.out, args.initial_epochs, args.cascade_epochs,
                                    LEARNING_RATE, rho, name=name, lr_schedule=args.lr_schedule, verbose=2)
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
