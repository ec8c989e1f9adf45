"""Dense CRF post-processing (Krähenbühl & Koltun 2011, as DeepLab uses it) through `pydensecrf2`.

Unary: −log of the cascade's final probabilities; pairwise: a Gaussian (smoothness) and a bilateral
(appearance) kernel with Potts compatibility. The mean-field inference is the maintained C++ library's;
this module only maps parameters, checks them, and searches a small grid on a validation split.
"""

import itertools
import json
from pathlib import Path

import numpy as np

# DeepLab-v2 (ResNet-101) values: w_bilateral 4, σ_xy 67, σ_rgb 3; w_gaussian 3, σ_xy 1; 10 iterations.
DEEPLAB_V2 = {"iterations": 10, "gaussian_weight": 3.0, "gaussian_sxy": 1.0, "bilateral_weight": 4.0,
              "bilateral_sxy": 67.0, "bilateral_srgb": 3.0}
# The search grid of `tune_crf` (DeepLab-v2 searches w_bilateral, σ_xy and σ_rgb with the Gaussian fixed).
GRID = {"bilateral_weight": (3.0, 4.0, 5.0), "bilateral_sxy": (30.0, 50.0, 70.0, 90.0), "bilateral_srgb": (3.0, 5.0)}
PARAMS_FILE = "crf.json"  # written next to a model by `keras-lc tune-crf`
_MISSING = "dense CRF needs the pydensecrf2 package: pip install 'keras_lc[crf]' (or pip install pydensecrf2)"


def require_densecrf():
    """The pydensecrf2 module; an ImportError naming the extra to install when it is missing."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ImportError(_MISSING) from None
    return dcrf


def check_params(params=None):
    """Complete and check CRF parameters (None: DeepLab-v2's). Unknown keys and negative or
    non-numeric values are a ValueError naming them."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEEPLAB_V2))
    if unknown:
        raise ValueError(f"unknown CRF parameters {unknown}; valid: {sorted(DEEPLAB_V2)}.")
    out = dict(DEEPLAB_V2)
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"CRF parameter {key} must be a non-negative number; got {value!r}.")
        out[key] = float(value)
    if out["iterations"] != int(out["iterations"]) or out["iterations"] < 1:
        raise ValueError(f"CRF iterations must be a positive integer; got {params.get('iterations')!r}.")
    out["iterations"] = int(out["iterations"])
    for key in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        if out[key] <= 0:
            raise ValueError(f"CRF parameter {key} must be positive; got {out[key]!r}.")
    return out


def dense_crf(image, probs, params=None):
    """Refine one image's labels with a dense CRF.

    Args:
        image: uint8 `[H, W, 3]`.
        probs: float `[H, W, K]`, the model's final probabilities.
        params: dict of `DEEPLAB_V2`'s keys (missing ones take its values).

    Returns:
        int32 `[H, W]` labels (the argmax of the CRF's marginals).
    """
    dcrf = require_densecrf()
    from pydensecrf.utils import unary_from_softmax

    params = check_params(params)
    image, probs = np.asarray(image), np.asarray(probs, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
        raise ValueError(f"dense_crf needs image [H, W, 3] and probs [H, W, K] of one size; got {image.shape} "
                         f"and {probs.shape}.")
    h, w, k = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.transpose(2, 0, 1))))
    if params["gaussian_weight"] > 0:
        crf.addPairwiseGaussian(sxy=params["gaussian_sxy"], compat=params["gaussian_weight"])
    if params["bilateral_weight"] > 0:
        crf.addPairwiseBilateral(sxy=params["bilateral_sxy"], srgb=params["bilateral_srgb"],
                                 rgbim=np.ascontiguousarray(image.astype(np.uint8)), compat=params["bilateral_weight"])
    marginals = np.array(crf.inference(params["iterations"])).reshape(k, h, w)
    return marginals.argmax(0).astype(np.int32)


def read_params(path):
    """CRF parameters from a JSON file (as `tune-crf` writes it: the parameters under "params")."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CRF parameter file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"CRF parameter file {path} is not valid JSON: {e}") from None
    return check_params(data.get("params", data) if isinstance(data, dict) else data)


def params_for_model(model_path, params=None):
    """The CRF parameters for a model: an explicit file or "deeplab"; None finds `crf.json` next to the
    model (what `tune-crf` wrote) and falls back to DeepLab-v2's."""
    if params == "deeplab":
        return check_params()
    if params not in (None, "auto"):
        return read_params(params)
    beside = Path(model_path).with_name(PARAMS_FILE)
    return read_params(beside) if beside.is_file() else check_params()


def confusion(truth, labels, num_classes, ignore_class=None):
    """K×K confusion matrix (rows: truth) of one label map against the truth, ignoring `ignore_class`."""
    truth, labels = np.asarray(truth).ravel(), np.asarray(labels).ravel()
    valid = (truth >= 0) & (truth < num_classes)
    if ignore_class is not None:
        valid &= truth != ignore_class
    return np.bincount(truth[valid] * num_classes + labels[valid], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def miou_of(cm):
    """Mean IoU over the classes present in truth or predictions."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0])) if (union > 0).any() else 0.0


def tune_crf(items, num_classes, ignore_class=None, grid=None, base=None):
    """Grid search of CRF parameters on `(image, probs, truth)` triples (probabilities computed once).

    Returns:
        dict: `params` (the best), `miou` (theirs), `miou_without` (the plain argmax), `table`
        (every tried point with its mIoU), `num_images`.
    """
    grid = dict(GRID if grid is None else grid)
    base = check_params(base)
    items = list(items)
    if not items:
        raise ValueError("tune_crf needs at least one image.")
    plain = sum(confusion(t, p.argmax(-1), num_classes, ignore_class) for _, p, t in items)
    table = []
    for values in itertools.product(*grid.values()):
        params = check_params({**base, **dict(zip(grid, values))})
        cm = sum(confusion(t, dense_crf(im, p, params), num_classes, ignore_class) for im, p, t in items)
        table.append({"params": params, "miou": miou_of(cm)})
    best = max(table, key=lambda row: row["miou"])
    return {"params": best["params"], "miou": best["miou"], "miou_without": miou_of(plain), "table": table,
            "num_images": len(items)}
