"""Fig. 7a for several models in one picture: mIoU against images/s over a ρ sweep, each model's dense speed.

Reads the `analysis.json` that `keras-lc analyze MODEL --data camvid ... --out DIR` writes for each model (the
accuracy of every ρ on the whole split, the speed of the same ρ on its first batch), optionally a peer's images/s
from `benchmarks/peer_keras_hub.py --json`, and draws one frontier per model with its dense network as a hollow
marker on the same axes.

    python benchmarks/fig7a_frontiers.py NAME=DIR/analysis.json [NAME=...] [--peer peer.json] --out fig.png

With `--speeds peer.json` every speed comes from that one `peer_keras_hub.py` run instead (batch 1, the models and
the peer timed side by side, alternating): write each model as `NAME=DIR/analysis.json@ROW`, ROW the model's name in
that run (e.g. `camvid_lite0_lc.keras`, whose rows are "ROW dense" and "ROW rho R"); a ρ the run did not time is
left out of the curve.
"""

import argparse
import json
import sys
from pathlib import Path


def frontier_curves(analyses, timed=None):
    """`[(name, points [{rho, miou, images_per_s}], dense images/s, mIoU at ρ 1)]` of `NAME=analysis.json[@ROW]`
    specs; with `timed` (`{row name: images/s}` of one peer run) every speed comes from it. ValueError on a bad spec."""
    curves = []
    for item in analyses:
        name, _, path = item.partition("=")
        path, _, row = path.partition("@")
        fig7a = json.loads(Path(path).read_text())["fig7a"]
        pts, dense = fig7a["points"], fig7a["dense_images_per_s"]
        full = next(q for q in pts if q["rho"] == 1.0)["miou"]  # the dense network computes what ρ = 1 does
        if timed is not None:
            if not row or f"{row} dense" not in timed:
                models = sorted({k[: -len(" dense")] for k in timed if k.endswith(" dense")})
                raise ValueError(f"{item}: with --speeds, write NAME=analysis.json@ROW, ROW one of {models}")
            key = {q["rho"]: f"{row} rho {q['rho']:g}" for q in pts}
            pts = [dict(q, images_per_s=timed[key[q["rho"]]]) for q in pts if key[q["rho"]] in timed]
            dense = timed[f"{row} dense"]
        curves.append((name, pts, dense, full))
    return curves


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analyses", nargs="+", help="NAME=path/to/analysis.json (with --speeds: ...@ROW)")
    p.add_argument("--peer", default=None, help="JSON of benchmarks/peer_keras_hub.py (its keras-hub row)")
    p.add_argument("--speeds", default=None, help="JSON of benchmarks/peer_keras_hub.py: every images/s from it")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    timed = None
    if args.speeds:
        timed = {r["model"]: r["images_per_s"] for r in json.loads(Path(args.speeds).read_text())["rows"]}
        args.peer = args.peer or args.speeds
    try:
        curves = frontier_curves(args.analyses, timed)
    except ValueError as e:
        p.error(str(e))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, pts, dense, full) in enumerate(curves):
        colour = f"C{i}"
        ax.plot([q["images_per_s"] for q in pts], [100 * q["miou"] for q in pts], "o-", color=colour, label=name)
        for q in pts:
            ax.annotate(f"{q['rho']:g}", (q["images_per_s"], 100 * q["miou"]), fontsize=6, xytext=(3, 2),
                        textcoords="offset points", color=colour)
        ax.plot([dense], [100 * full], "s", mfc="none", color=colour, ms=8, label=f"{name}, dense")
    if args.peer:
        rows = json.loads(Path(args.peer).read_text())
        rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
        peer = next((r for r in rows if "keras-hub" in str(r.get("model", r.get("name", ""))).lower()), None)
        if peer is not None:
            ax.axvline(peer["images_per_s"], color="grey", ls="--", label="keras-hub DeepLabV3+ (speed only)")
    ax.set_xlabel("images / s, batch 1, one run with the peer (2-core CPU)" if timed is not None
                  else "images / s (batch of the split's first frames, 2-core CPU)")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
