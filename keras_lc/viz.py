"""Stage-map pictures: image | labels | deciding stage, written as PNG."""

import numpy as np
import tensorflow as tf

from keras_lc.layers.region_index import grid_padding

# Deciding stage 1, 2, 3: green (easy), orange, red (hard).
STAGE_COLOURS = np.array([[0, 0, 0], [46, 160, 67], [240, 160, 40], [215, 40, 40]], np.uint8)


def palette(num_classes, void=True):
    """A fixed, distinct RGB palette `[K (+1 void), 3]` uint8; void is grey."""
    rng = np.random.default_rng(1234)
    base = np.array(
        [[128, 64, 128], [70, 130, 180], [220, 20, 60], [250, 170, 30], [107, 142, 35], [0, 0, 142],
         [153, 153, 153], [255, 255, 0], [190, 153, 153], [0, 80, 100], [119, 11, 32], [152, 251, 152]],
        np.uint8,
    )
    extra = rng.integers(0, 256, size=(max(0, num_classes - len(base)), 3)).astype(np.uint8)
    colours = np.concatenate([base, extra])[:num_classes]
    return np.concatenate([colours, [[96, 96, 96]]]).astype(np.uint8) if void else colours


def colourize(labels, colours):
    """int `[H, W]` → uint8 `[H, W, 3]`; labels outside the palette are black."""
    labels = np.asarray(labels).astype(np.int64)
    out = np.zeros((*labels.shape, 3), np.uint8)
    ok = (labels >= 0) & (labels < len(colours))
    out[ok] = colours[labels[ok]]
    return out


def dataset_palette(info):
    """The palette of a dataset's classes.json (`palette_rgb`, void last), or None."""
    colours = info.get("palette_rgb") if info else None
    return None if colours is None else np.asarray(colours, np.uint8)


def stage_panel(image, labels, stage, num_classes, truth=None, colours=None):
    """One PNG-ready panel: image | [truth] | labels | deciding stage, `[H, W', 3]` uint8."""
    colours = palette(num_classes) if colours is None else colours
    parts = [np.asarray(image, np.uint8)]
    if truth is not None:
        parts.append(colourize(truth, colours))
    parts += [colourize(labels, colours), colourize(stage, STAGE_COLOURS)]
    gap = np.full((parts[0].shape[0], 4, 3), 255, np.uint8)
    row = []
    for p in parts:
        row += [p, gap]
    return np.concatenate(row[:-1], axis=1)


def write_png(path, array):
    """Write a uint8 `[H, W, 3]` array as PNG (TensorFlow's encoder, no extra dependency)."""
    tf.io.write_file(str(path), tf.io.encode_png(np.asarray(array, np.uint8)))


# --------------------------------------------------------------- matplotlib panels
GREY_FORWARDED = np.array([190, 190, 190], np.uint8)
DARK_EARLIER = np.array([45, 45, 45], np.uint8)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stage_label_maps(outputs, height, width, pad_to=None):
    """Per stage: labels at the input resolution `[H, W]` from that stage's probabilities.

    Args:
        outputs: one image's model outputs (numpy), with `stage1`..`stage3` `[h, w, K]`.
        height, width: the image's size.
        pad_to: the model's `pad_to`: its grid covers the image padded bottom/right to multiples of it.
    """
    dh, dw = grid_padding(height, width, pad_to)
    ph, pw = height + dh, width + dw
    maps = []
    for k in (1, 2, 3):
        up = tf.image.resize(outputs[f"stage{k}"][None], (ph, pw), method="bilinear")[0, :height, :width]
        maps.append(np.argmax(up.numpy(), -1))
    return maps


def cascade_panel_array(image, outputs, num_classes, truth=None, colours=None, pad_to=None):
    """The panel's images as uint8 arrays, in order, with their titles.

    Stage k's map shows the labels of the pixels it decided; pixels it forwarded
    are light grey and pixels decided by an earlier stage are dark. `pad_to`: the model's
    (see `stage_label_maps`).
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    colours = palette(num_classes) if colours is None else colours
    stage = np.asarray(outputs["stage"])
    tiles = [("image", image)]
    if truth is not None:
        tiles.append(("ground truth", colourize(truth, colours)))
    for k, labels_k in enumerate(stage_label_maps(outputs, h, w, pad_to), start=1):
        tile = colourize(labels_k, colours)
        tile[stage > k] = GREY_FORWARDED
        tile[stage < k] = DARK_EARLIER
        share = 100.0 * np.mean(stage == k)
        tiles.append((f"stage {k} ({share:.1f}% decided)", tile))
    tiles.append(("deciding stage", colourize(stage, STAGE_COLOURS)))
    tiles.append(("final labels", colourize(outputs["labels"], colours)))
    return tiles


def cascade_figure(image, outputs, class_names, truth=None, title=None, colours=None, pad_to=None):
    """A matplotlib figure like the paper's Figs. 4/6, with a legend of classes and stages (`pad_to`: the
    model's, see `stage_label_maps`)."""
    plt = _plt()
    from matplotlib.patches import Patch

    colours = palette(len(class_names)) if colours is None else colours
    tiles = cascade_panel_array(image, outputs, len(class_names), truth, colours, pad_to)
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.6 * len(tiles), 2.9), squeeze=False)
    for ax, (name, tile) in zip(axes[0], tiles):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=colours[i] / 255.0, label=n) for i, n in enumerate(class_names)]
    handles += [Patch(color=STAGE_COLOURS[k] / 255.0, label=f"decided at stage {k}") for k in (1, 2, 3)]
    handles += [Patch(color=GREY_FORWARDED / 255.0, label="forwarded"), Patch(color=DARK_EARLIER / 255.0,
                                                                              label="decided earlier")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.2, top=0.85, wspace=0.05)
    return fig


def save_figure(fig, path):
    plt = _plt()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def plot_difficulty(fig1b, path):
    """Fig. 1b: stacked shares of easy / moderate / extremely hard pixels per class."""
    plt = _plt()
    names = fig1b["classes"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.6))
    bottom = np.zeros(len(names))
    for d, colour in zip(("easy", "moderate", "extremely_hard"), ("#2ea043", "#f0a028", "#d72828")):
        v = np.asarray(fig1b["share"][d])
        ax.bar(x, v, bottom=bottom, color=colour, label=d.replace("_", " "))
        bottom += v
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("share of the class's pixels")
    hob = fig1b["hard_on_boundary"]
    ax.set_title(
        f"difficulty at confidence {fig1b['threshold']}: extremely hard on boundaries "
        + ("n/a" if hob is None else f"{100 * hob:.0f}%")
        + f" (all pixels: {100 * fig1b['pixels_on_boundary']:.0f}%)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_stage_share(fig5, path):
    """Fig. 5: per class, the share of its pixels decided at each stage."""
    plt = _plt()
    names = list(fig5["per_class_stage_share"])
    shares = np.array([fig5["per_class_stage_share"][n] for n in names])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.6))
    for k in range(3):
        ax.bar(x + (k - 1) * 0.27, shares[:, k], width=0.27, color=STAGE_COLOURS[k + 1] / 255.0, label=f"stage {k + 1}")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("share of the class's pixels")
    ax.set_title(f"where each class is decided (rho = {fig5['rho']:g})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_tradeoff(fig7a, path):
    """Fig. 7a: mIoU against images/s over a ρ sweep, with the dense network's speed."""
    plt = _plt()
    pts = fig7a["points"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([p["images_per_s"] for p in pts], [100 * p["miou"] for p in pts], "o-", color="#d72828")
    for p in pts:
        ax.annotate(f"ρ={p['rho']:g}", (p["images_per_s"], 100 * p["miou"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axvline(fig7a["dense_images_per_s"], color="grey", ls="--", label="dense network")
    ax.set_xlabel("images / s")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_stage_times(fig7b, path):
    """Fig. 7b: milliseconds per batch spent in each stage."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.2))
    ms = [1000 * fig7b[f"stage{k}"] for k in (1, 2, 3)]
    ax.bar(["stage 1", "stage 2", "stage 3"], ms, color=[STAGE_COLOURS[k] / 255.0 for k in (1, 2, 3)])
    share = fig7b["stage_share"]
    ax.set_title(f"time per stage at rho = {fig7b['rho']:g} (reach: 100%, {100 * (share[1] + share[2]):.0f}%, "
                 f"{100 * share[2]:.0f}%)", fontsize=8)
    ax.set_ylabel("ms per batch")
    fig.tight_layout()
    save_figure(fig, path)
