"""Fig. 7a for several models in one picture: mIoU against images/s over a ρ sweep, each model's dense speed.

Reads the `analysis.json` that `keras-lc analyze MODEL --data camvid ... --out DIR` writes for each model (the
accuracy of every ρ on the whole split, the speed of the same ρ on its first batch), optionally a peer's images/s
from `benchmarks/peer_keras_hub.py --json`, and draws one frontier per model with its dense network as a hollow
marker on the same axes.

    python benchmarks/fig7a_frontiers.py NAME=DIR/analysis.json [NAME=...] [--peer peer.json] --out fig.png
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analyses", nargs="+", help="NAME=path/to/analysis.json")
    p.add_argument("--peer", default=None, help="JSON of benchmarks/peer_keras_hub.py (its keras-hub row)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, item in enumerate(args.analyses):
        name, _, path = item.partition("=")
        fig7a = json.loads(Path(path).read_text())["fig7a"]
        pts = fig7a["points"]
        colour = f"C{i}"
        ax.plot([q["images_per_s"] for q in pts], [100 * q["miou"] for q in pts], "o-", color=colour, label=name)
        for q in pts:
            ax.annotate(f"{q['rho']:g}", (q["images_per_s"], 100 * q["miou"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points", color=colour)
        full = next(q for q in pts if q["rho"] == 1.0)  # the dense network computes what ρ = 1 computes
        ax.plot([fig7a["dense_images_per_s"]], [100 * full["miou"]], "s", mfc="none", color=colour, ms=8,
                label=f"{name}, dense")
    if args.peer:
        rows = json.loads(Path(args.peer).read_text())
        rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
        peer = next((r for r in rows if "keras" in str(r.get("model", r.get("name", ""))).lower()), None)
        if peer is not None:
            ax.axvline(peer["images_per_s"], color="grey", ls="--", label="keras-hub DeepLabV3+ (speed only)")
    ax.set_xlabel("images / s (batch of the split's first frames, 2-core CPU)")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
