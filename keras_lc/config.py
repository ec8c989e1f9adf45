"""The one typed training config: CLI flags, TOML recipes and Python all go through `TrainConfig`.

Model Garden's `configs/` habit without its registries: one dataclass whose fields are the
training options, each with its type and range checked in one place, so a recipe value gets
exactly the checks a flag gets, and an unknown key is an error naming the valid ones.
"""

import dataclasses
import tomllib
from pathlib import Path

from keras_lc.layers.stage_head import check_rho

BACKBONE_NAMES = ("tiny", "irnet", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite1",
                  "efficientnet_lite2")


@dataclasses.dataclass
class TrainConfig:
    """Every option of `keras-lc train` (the flag `--initial-epochs` is the field `initial_epochs`)."""

    backbone: str = "tiny"
    channels: int | None = None
    output_stride: int | None = None
    head_channels: int | None = None
    block_counts: tuple | None = None
    imagenet_weights: str | None = None
    init_weights: str | None = None
    rho: float = 0.95
    initial_epochs: int = 8
    cascade_epochs: int = 6
    learning_rate: float = 2e-3
    cascade_learning_rate: float | None = None
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    class_weights: str = "none"
    loss_resolution: str = "stage"
    head: str = "plain"
    aspp_rates: tuple | None = None
    loss_weights: tuple | None = None
    halo: int = 0
    save_every: int = 0
    time_budget: float = 0.0
    val_images: int = 64
    out: str = "runs/demo"
    strategy: str = "default"
    precision: str = "float32"
    timeout: float = 300.0
    data: str = "synthetic"
    data_dir: str | None = None
    crop: int = 256
    num_images: int = 1024
    image_size: int = 96
    num_classes: int = 5
    seed: int = 0
    batch_size: int = 8

    CHOICES = {
        "backbone": BACKBONE_NAMES, "output_stride": (None, 8, 16), "optimizer": ("adam", "sgd"),
        "lr_schedule": ("constant", "cosine"), "class_weights": ("none", "median", "median-sqrt"),
        "loss_resolution": ("stage", "input"), "head": ("plain", "aspp", "decoder"),
        "strategy": ("default", "mirrored", "multi_worker"), "data": ("synthetic", "camvid", "voc", "cityscapes"),
        "precision": ("float32", "mixed_float16", "mixed_bfloat16"),
    }
    # (smallest allowed value) of the numeric fields
    MINIMUM = {"halo": 0, "channels": 1, "head_channels": 1, "initial_epochs": 0, "cascade_epochs": 0, "save_every": 0,
               "val_images": 1, "timeout": 1e-9, "crop": 8, "num_images": 1, "image_size": 8, "num_classes": 2,
               "batch_size": 1, "learning_rate": 1e-12, "cascade_learning_rate": 1e-12, "seed": 0,
               "time_budget": 0.0}

    def __post_init__(self):
        for field in dataclasses.fields(self):
            setattr(self, field.name, self._check(field.name, getattr(self, field.name)))

    @staticmethod
    def parse_block_counts(text):
        """"5,10,5" (or a sequence) -> (5, 10, 5); a clear ValueError otherwise."""
        return TrainConfig._check(TrainConfig, "block_counts", text)

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def _check(self, name, value):
        default = {f.name: f for f in dataclasses.fields(self)}[name].default
        if value is None and (default is None or name in ("imagenet_weights", "init_weights", "data_dir")):
            return None
        if name == "rho":
            return check_rho(value)
        if name == "aspp_rates":
            try:
                rates = tuple(int(r) for r in (value.split(",") if isinstance(value, str) else value))
            except (TypeError, ValueError):
                rates = ()
            if not rates or min(rates) < 1:
                raise ValueError(f"aspp_rates (--aspp-rates) must be positive integers like 6,12,18,24; got {value!r}.")
            return rates
        if name == "loss_weights":
            try:
                weights = tuple(float(w) for w in (value.split(",") if isinstance(value, str) else value))
            except (TypeError, ValueError):
                weights = ()
            if len(weights) != 3 or min(weights) < 0 or max(weights) == 0:
                raise ValueError(f"loss_weights (--loss-weights) must be three non-negative numbers, not all zero, "
                                 f"like 0.3,0.3,1; got {value!r}.")
            return weights
        if name == "block_counts":
            try:
                counts = value.split(",") if isinstance(value, str) else list(value)
                counts = tuple(int(c) for c in counts)
            except (TypeError, ValueError):
                counts = ()
            if len(counts) != 3 or min(counts) < 1:
                raise ValueError(f"block_counts (--block-counts) must be three positive integers like 5,10,5; "
                                 f"got {value!r}.")
            return counts
        kind = {int: int, float: float, str: str}.get(type(default)) or (
            int if name in ("channels", "head_channels", "output_stride") else
            float if name == "cascade_learning_rate" else str)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if not (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
                    raise ValueError(f"{name} must be an integer; got {value!r}.")
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a number; got {value!r}.")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number; got {value!r}.") from None
        elif not isinstance(value, str):
            raise ValueError(f"{name} must be a string; got {value!r}.")
        if name in self.CHOICES and value not in self.CHOICES[name]:
            choices = ", ".join(str(c) for c in self.CHOICES[name] if c is not None)
            raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
        if name in self.MINIMUM and value < self.MINIMUM[name]:
            raise ValueError(f"{name} must be at least {self.MINIMUM[name]:g}; got {value!r}.")
        return value

    @classmethod
    def from_mapping(cls, values, source="config"):
        """Build from a dict (a recipe); unknown keys are an error naming them and the valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source} has unknown keys: {', '.join(unknown)}; valid keys: "
                             f"{', '.join(cls.field_names())}.")
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_toml(cls, path):
        """Read a recipe (`recipes/*.toml`)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"recipe not found: {path}")
        try:
            recipe = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"recipe {path} is not valid TOML: {e}") from None
        return cls.from_mapping(recipe, source=f"recipe {path}"), recipe

    def head_kwargs(self):
        """The keyword arguments of `build_model` for the heads and the losses."""
        if self.aspp_rates and self.head != "aspp":
            raise ValueError("aspp_rates needs head = 'aspp' (--head aspp)")
        return {"head": self.head, "aspp_rates": self.aspp_rates, "loss_resolution": self.loss_resolution,
                "loss_weights": self.loss_weights, "halo": self.halo}

    def backbone_kwargs(self):
        """The keyword arguments of `build_model` that this config's backbone takes."""
        kwargs = {}
        if self.channels:
            if self.backbone != "tiny":
                raise ValueError("channels applies to the tiny backbone")
            kwargs.update(width=self.channels, bottleneck_channels=self.channels, head_channels=self.channels)
        if self.head_channels:
            kwargs["head_channels"] = self.head_channels
        if self.output_stride:
            if not self.backbone.startswith("efficientnet_lite"):
                raise ValueError("output_stride applies to the efficientnet_lite* backbones")
            kwargs["output_stride"] = self.output_stride
        if self.block_counts:
            if self.backbone != "irnet":
                raise ValueError("block_counts applies to the irnet backbone")
            kwargs["block_counts"] = self.block_counts
        return kwargs
