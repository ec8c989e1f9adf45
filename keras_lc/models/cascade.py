"""LayerCascade: three stages, a head after each, and the ρ-masked training step."""

import math
import numbers

import keras
import tensorflow as tf

from keras_lc.layers.region_index import RegionIndex, grid_padding, grow_region, repeat_cells, resize_nearest
from keras_lc.layers.stage_head import check_rho, check_rho_tensor
from keras_lc.models.cascade_steps import _IMAGE_ERROR, CascadeSteps, clear_errors  # noqa: F401 - public here too

TRAINING_MODES = ("initial", "cascade")
LOSS_RESOLUTIONS = ("stage", "input")
# Input scaling of 0..255 images, per backbone: (x - offset) / divisor.
PREPROCESSING = {"symmetric": (127.5, 127.5), "efficientnet_lite": (127.0, 128.0)}
FUSIONS = ("mean", "max")


def check_scales(scales):
    """Test scales: a non-empty sequence of positive finite numbers. Returns a tuple of floats."""
    try:
        scales = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be positive numbers like (0.5, 0.75, 1.0); got {scales!r}.") from None
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"scales must be positive numbers like (0.5, 0.75, 1.0); got {scales!r}.")
    return scales


@keras.saving.register_keras_serializable(package="keras_lc")
class LayerCascade(CascadeSteps, keras.Model):
    """Deep Layer Cascade: a network split into three stages, each with a head.

    Stage 1 runs on every pixel. A pixel whose stage-k max softmax probability is
    ≥ ρ is decided at stage k; only the rest (the region) is forwarded, and stages 2
    and 3 compute only there (region convolutions, masked residual blocks). The
    final map takes each pixel's probabilities from the stage that decided it.

    Args:
        stages: list of 3 layers. `stages[0](x, training=...)` maps preprocessed
            images `[B, H, W, 3]` to features `[B, h, w, C]`; `stages[1]`,
            `stages[2]` are called as `stage(x, region=RegionIndex, training=...)`
            and keep the shape.
        heads: list of 3 `StageHead`.
        num_classes: int K.
        rho: float in (0, 1], the confidence threshold. Settable later
            (`model.rho = 0.95`) without rebuilding. 1.0 = deeply supervised net.
        ignore_class: int or None, the label ignored by losses and mIoU (e.g. void).
        training_mode: "initial" (every stage's loss on every labelled pixel, the
            DSN step) or "cascade" (stage k's loss only on the pixels reaching it).
        class_weights: optional K per-class loss weights (e.g. median frequency).
        loss_weights: optional 3 non-negative weights of the stage losses in the
            training step (default 1, 1, 1). `(0, 0, 1)` trains a one-head network
            (the paper's baseline); a zero weight skips that loss's gradient.
        label_keep: optional 3 probabilities in (0, 1]: during training, stage k's
            loss sees each labelled pixel with this probability (nested: a pixel kept
            for stage 3 is kept for stage 2). The paper's "DSN + dropout" ablation:
            random pixels dropped at LC's ratio instead of the easy ones.
        dense_threshold: float in (0, 1] or None. A region stage whose forwarded
            fraction is at least this is computed densely and masked (same
            numbers, cheaper above the gather/scatter crossover); None: never.
        loss_resolution: where the stage losses are computed: "stage" (labels resized
            nearest to the stage grid, DeepLab-v2's way) or "input" (each stage's logits
            resized bilinearly to the labels' size and its region nearest; the region stays
            exact, thin classes keep their pixels in the loss). Training only.
        preprocessing: how 0..255 images are scaled inside the model: "symmetric"
            (x / 127.5 − 1, the default) or "efficientnet_lite" ((x − 127) / 128, what the
            EfficientNet-Lite ImageNet weights were trained on).
        halo: int ≥ 0 (default 0, the paper's region convolution). Stages 2–3 compute on their
            region grown by `halo` cells (Chebyshev distance on the stage grid), so that the
            convolutions at the region's edge read computed neighbours instead of the zeros the
            paper's region convolution puts outside the region. The decisions, the losses and the
            final map stay those of the region itself: a grown cell only supplies context. A halo
            covering the grid gives the dense stages' features under the cascade's decisions.
            Costs time: the grown region is larger. Settable (`model.halo = 1`) without rebuilding.
        pad_to: int ≥ 1 or None (default: no padding). Images are padded at the bottom and right
            to a multiple of `pad_to` (with the gray the training crops are padded with) before
            stage 1, and the input-resolution outputs cropped back. Set to the stage grid's stride
            (`build_model` does), every image's grid lies on it as on training crops whose sides are
            multiples of the stride: with TensorFlow's "same" padding an odd-sized map at a strided
            conv shifts the grid by a cell of that level (CamVid's 360 rows at output stride 16: the
            last strided conv sees 45 rows). The stage grid's size is the same either way
            (ceil(H / stride)). Settable without rebuilding.
        **kwargs: `keras.Model` arguments (name, ...).

    Call arguments:
        inputs: images `[B, H, W, 3]`, uint8 or float in 0..255 (scaled inside).
        rho: optional float scalar overriding the model's ρ for this call.
        training: bool.

    Returns:
        dict with
        `"labels"` int32 `[B, H, W]` (input resolution),
        `"probs"` float32 `[B, H, W, K]` (the deciding stage's probabilities),
        `"stage"` uint8 `[B, H, W]` (1, 2 or 3: the deciding stage),
        `"stage1"`, `"stage2"`, `"stage3"` float32 `[B, h, w, K]`: each stage's
        probabilities at the stage resolution (decoder heads: `[B, H/4, W/4, K]`), zeros
        where the stage did not run.
    """

    def __init__(
        self,
        stages,
        heads,
        num_classes,
        rho=0.985,
        ignore_class=None,
        training_mode="cascade",
        dense_threshold=0.7,
        class_weights=None,
        loss_weights=None,
        label_keep=None,
        preprocessing="symmetric",
        loss_resolution="stage",
        halo=0,
        pad_to=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._halo = self._check_halo(halo)
        self._pad_to = self._check_pad_to(pad_to)
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}; got {loss_resolution!r}.")
        self.loss_resolution = loss_resolution
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {sorted(PREPROCESSING)}; got {preprocessing!r}.")
        self.preprocessing = preprocessing
        stages = [keras.saving.deserialize_keras_object(s) if isinstance(s, dict) else s for s in stages]
        heads = [keras.saving.deserialize_keras_object(h) if isinstance(h, dict) else h for h in heads]
        if len(stages) != 3 or len(heads) != 3:
            raise ValueError(f"LayerCascade needs 3 stages and 3 heads; got {len(stages)} and {len(heads)}.")
        decoders = {getattr(h, "decoder_channels", None) is not None for h in heads}
        if len(decoders) != 1 or len({getattr(h, "upsample", 1) for h in heads}) != 1:
            raise ValueError("The three heads must all have a decoder (with one upsample factor) or none.")
        self.decoder = decoders.pop()
        self.upsample = getattr(heads[0], "upsample", 1)
        if self.decoder and not hasattr(stages[0], "features_and_low_level"):
            raise ValueError("Decoder heads need a stage 1 with low-level features (`features_and_low_level`; "
                             "the EfficientNet-Lite backbones have it).")
        self.num_classes = int(num_classes)
        if ignore_class is not None and 0 <= int(ignore_class) < self.num_classes:
            raise ValueError(
                f"ignore_class={ignore_class} is one of the {self.num_classes} classes; "
                "use a label outside [0, num_classes) (e.g. num_classes or 255)."
            )
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self._dense_threshold = self._check_threshold(dense_threshold)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != self.num_classes or min(class_weights) < 0:
                raise ValueError(f"class_weights must be {self.num_classes} non-negative numbers; got {class_weights}.")
        self.class_weights = class_weights
        self.loss_weights = self._three("loss_weights", loss_weights, 0.0, float("inf"), (1.0, 1.0, 1.0))
        if max(self.loss_weights) == 0:
            raise ValueError("loss_weights are all zero: nothing would be trained.")
        self.label_keep = self._three("label_keep", label_keep, 1e-6, 1.0, None)
        self.stages = stages
        self.heads = heads
        self._rho_value = check_rho(rho)
        self._rho = tf.Variable(self._rho_value, trainable=False, dtype=tf.float32, name="rho")
        self._training_mode = self._check_mode(training_mode)
        self._dense = False
        self.loss_trackers = [
            keras.metrics.Mean(name=n) for n in ("loss", "stage1_loss", "stage2_loss", "stage3_loss")
        ]
        self.share_trackers = [keras.metrics.Mean(name=f"stage{k}_share") for k in (1, 2, 3)]
        self.miou_metric = keras.metrics.MeanIoU(
            num_classes=self.num_classes, ignore_class=self.ignore_class, sparse_y_pred=True, name="miou"
        )

    # ------------------------------------------------------------- settings
    @staticmethod
    def _three(name, values, low, high, default):
        if values is None:
            return default
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be 3 numbers; got {values!r}.") from None
        if len(values) != 3 or not all(low <= v <= high for v in values):
            raise ValueError(f"{name} must be 3 numbers in [{low:g}, {high:g}]; got {values}.")
        return values

    @staticmethod
    def _check_mode(mode):
        if mode not in TRAINING_MODES:
            raise ValueError(f"training_mode must be one of {TRAINING_MODES}; got {mode!r}.")
        return mode

    def _reset_functions(self):
        self.train_function = None
        self.test_function = None
        self.predict_function = None

    @property
    def rho(self):
        """The confidence threshold ρ in (0, 1]; settable without rebuilding."""
        return self._rho_value

    @rho.setter
    def rho(self, value):
        self._rho_value = check_rho(value)
        self._rho.assign(self._rho_value)
        self._reset_functions()  # the compute path at ρ = 1 is chosen when tracing

    @property
    def training_mode(self):
        """"initial" (DSN: all stages, all pixels) or "cascade" (ρ-masked losses)."""
        return self._training_mode

    @training_mode.setter
    def training_mode(self, mode):
        self._training_mode = self._check_mode(mode)
        self._reset_functions()

    @staticmethod
    def _check_threshold(value):
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"dense_threshold must be a number in (0, 1] or None; got {value!r}.") from None
        if not 0.0 < value <= 1.0:
            raise ValueError(f"dense_threshold must be in (0, 1] or None; got {value}.")
        return value

    @property
    def dense_threshold(self):
        """Forwarded fraction from which a region stage is computed densely (None: never).
        Settable, e.g. to the crossover `keras_lc.benchmark.measure_crossover` finds."""
        return self._dense_threshold

    @dense_threshold.setter
    def dense_threshold(self, value):
        self._dense_threshold = self._check_threshold(value)
        self._reset_functions()  # the threshold is a constant of the traced graph

    @staticmethod
    def _check_halo(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"halo must be an integer >= 0 (cells of context around the region); got {value!r}.")
        return int(value)

    @property
    def halo(self):
        """Cells of context computed around the regions of stages 2–3 (0: the paper's region conv)."""
        return self._halo

    @halo.setter
    def halo(self, value):
        self._halo = self._check_halo(value)
        self._reset_functions()  # a constant of the traced graph

    @staticmethod
    def _check_pad_to(value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"pad_to must be an integer >= 1 (the stage grid's stride) or None; got {value!r}.")
        return int(value)

    @property
    def pad_to(self):
        """Images are padded bottom/right to a multiple of this before stage 1 (None: not padded)."""
        return self._pad_to

    @pad_to.setter
    def pad_to(self, value):
        self._pad_to = self._check_pad_to(value)
        self._reset_functions()  # a constant of the traced graph

    def pad_images(self, x):
        """Preprocessed images `[B, H, W, 3]` -> `[B, H', W', 3]` padded bottom/right to multiples of
        `pad_to` with the preprocessed gray 127.5 (what `random_scale_crop_flip` pads crops with)."""
        if not self._pad_to:
            return x
        dh, dw = grid_padding(tf.shape(x)[1], tf.shape(x)[2], self._pad_to)
        offset, divisor = PREPROCESSING[self.preprocessing]
        gray = (127.5 - offset) / divisor
        return tf.pad(x, [[0, 0], [0, dh], [0, dw], [0, 0]], constant_values=gray)

    @property
    def dense(self):
        """If True, every stage is computed densely and masked: the reference
        computation (same outputs as the cascade) and the "dense" side of benchmarks."""
        return self._dense

    @dense.setter
    def dense(self, value):
        self._dense = bool(value)
        self._reset_functions()

    # --------------------------------------------------------------- forward
    def build(self, input_shape):
        # Create every variable with one small dense forward (no tf.cond involved).
        self.forward_details(tf.zeros([1, 32, 32, 3], tf.float32), dense=True)

    def preprocess(self, inputs):
        """Validate images and scale them as the backbone expects.

        Args:
            inputs: uint8 or float `[B, H, W, 3]` images in 0..255.

        Returns:
            float32 `[B, H, W, 3]` (see `preprocessing`).
        """
        if not tf.is_tensor(inputs):
            inputs = tf.convert_to_tensor(inputs)
        shape = inputs.shape
        if shape.rank is not None and shape.rank != 4:
            raise ValueError(f"Images must be a 4D tensor [B, H, W, 3]; got shape {tuple(shape)}.")
        if shape.rank == 4 and shape[-1] is not None and shape[-1] != 3:
            raise ValueError(f"Images must have 3 channels (RGB) on the last axis; got shape {tuple(shape)}.")
        if shape.rank == 4 and any(d == 0 for d in shape[1:3]):
            raise ValueError(f"Images must have a non-zero height and width; got shape {tuple(shape)}.")
        if inputs.dtype != tf.uint8 and not inputs.dtype.is_floating:
            raise ValueError(f"Images must be uint8, or float in 0..255; got dtype {inputs.dtype.name} "
                             "(convert 16-bit images to 8 bits first).")
        if inputs.dtype.is_floating:
            inputs = self._check_values(tf.cast(inputs, tf.float32))
        # Preprocessing lives in the model so that exported models take raw uint8 images.
        offset, divisor = PREPROCESSING[self.preprocessing]
        return (tf.cast(inputs, tf.float32) - offset) / divisor

    @staticmethod
    def _check_values(x):
        """Float images: finite and within 0..255 (images scaled to 0..1 are accepted: they are in range,
        but the docs say the model expects 0..255)."""
        low, high = tf.reduce_min(x), tf.reduce_max(x)  # NaN propagates into both
        ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(x)), tf.logical_and(low >= 0.0, high <= 255.0))
        if tf.executing_eagerly():
            if not bool(ok):
                raise ValueError(f"{_IMAGE_ERROR}; got values from {float(low):g} to {float(high):g}"
                                 + (" (NaN or inf present)" if not bool(tf.reduce_all(tf.math.is_finite(x))) else "")
                                 + ".")
            return x
        check = tf.debugging.Assert(ok, [f"{_IMAGE_ERROR}; got values from", low, "to", high])
        with tf.control_dependencies([check]):
            return tf.identity(x)

    @property
    def rho_tensor(self):
        """The model's ρ as a float32 scalar tensor (read from its variable: traced graphs see later changes)."""
        return tf.identity(self._rho)

    def run_stage(self, k, features, region=None, *, rho=None, path="auto", training=False, low_level=None):
        """Stage k (1, 2 or 3) and its head: the building block of the forward pass, public for
        benchmarks, export and analysis.

        Args:
            k: 1, 2 or 3.
            features: stage 1: preprocessed images `[B, H, W, 3]` (`preprocess`); stages 2–3:
                the previous stage's features `[B, h, w, C]`.
            region: stages 2–3: bool `[B, h, w]`, the pixels reaching the stage (ignored for
                stage 1, which computes every pixel). The stage computes them, grown by `halo`.
            rho: float or float32 scalar tensor; None: the model's.
            path: "auto" (dense from `dense_threshold` up), "region" (the region path whatever
                the fraction), "dense" (the masked dense computation: same numbers) or "full"
                (the plain dense network, no masks: for a region covering every pixel, as at
                ρ ≥ 1; checked).
            training: bool.
            low_level: stages 2–3 with decoder heads: stage 1's `low_level` output.

        Returns:
            dict: `features` (the stage's output), `probs` float32 `[B, h, w, K]` and `logits`
            (zeros outside the computed region, i.e. the region grown by `halo`; decoder heads:
            `[B, H/4, W/4, K]`, zeros outside its cells), `next_region` bool `[B, h, w]` (the
            region's pixels forwarded to stage k + 1: never a halo cell), `low_level` (stage 1
            with decoder heads: its stride-4 features `[B, H/4, W/4, C']`, which the later heads
            read; else None).
        """
        if k not in (1, 2, 3):
            raise ValueError(f"k must be 1, 2 or 3; got {k!r}.")
        if path not in ("auto", "region", "dense", "full"):
            raise ValueError(f"path must be 'auto', 'region', 'dense' or 'full'; got {path!r}.")
        rho = self.rho_tensor if rho is None else tf.cast(rho, tf.float32)
        head_kwargs = {"rho": rho, "return_logits": True, "training": training}
        if k == 1:
            y, low_level = self._stage1_features(features, training)
            return self._stage1_head(y, low_level, rho, training)
        if region is None:
            raise ValueError(f"stage {k} needs a region: a bool tensor [B, h, w].")
        if self.decoder:
            if low_level is None:
                raise ValueError(f"stage {k} of a model with decoder heads needs low_level (stage 1's output).")
            head_kwargs["low_level"] = low_level

        # the region itself at halo 0, and on the full path (a grown full region is the region)
        computed = region if path == "full" else grow_region(region, self.halo)

        def run(use_dense, full=False):
            index = RegionIndex(computed, dense=use_dense, full=full)
            y = self.stages[k - 1](features, region=index, training=training)
            probs, next_region, logits = self.heads[k - 1](y, region=index, **head_kwargs)
            if self.halo:  # a halo cell is context only: decided by an earlier stage, never forwarded
                next_region = tf.logical_and(next_region, region)
            return {"features": y, "probs": probs, "next_region": next_region, "logits": logits, "low_level": None}

        if path == "full":  # every pixel: the dense computation with nothing to mask
            check = tf.debugging.Assert(tf.reduce_all(region), [f"run_stage({k}, path='full') needs a region "
                                                                "covering every pixel"])
            with tf.control_dependencies([check]):
                features = tf.identity(features)
            return run(True, full=True)
        if path == "dense":
            return run(True)
        if self.dense_threshold is None or path == "region":
            return run(False)
        fraction = tf.reduce_mean(tf.cast(computed, tf.float32))
        return tf.cond(fraction >= self.dense_threshold, lambda: run(True), lambda: run(False))

    def forward_details(self, inputs, rho=None, training=False, dense=None, forward_all=False, path=None):
        """The forward pass with its internals: what the steps, `bench`, export and analysis use.

        Args:
            inputs: uint8 or float `[B, H, W, 3]` images in 0..255.
            rho: float or float32 scalar tensor in (0, 1]; None takes the model's ρ.
                A Python ρ ≥ 1 (or the model's, when `rho` is None) is known while tracing
                and selects the dense compute path with no switch.
            training: bool, BatchNormalization mode.
            dense: bool or None (the model's `dense` flag): compute every stage densely and
                mask (the same numbers as the region path; the reference and the baseline
                that `bench` compares against).
            forward_all: bool; the initial (DSN) step: every stage computes every pixel
                densely and every pixel counts as reaching stage 3.
            path: None (the default: "dense" with `dense`, else the model's per-stage switch, and,
                for a ρ tensor, the dense graph whenever ρ ≥ 1) or a fixed compute path of stages
                2–3, "region" or "dense" (same numbers; the train step fixes "region": gradients
                through a data-dependent switch hit a TensorFlow executor error with ASPP heads).

        Returns:
            dict with, at the stage resolution `[B, h, w]` (output stride 4 or 8):
            `logits` and `probs_per_stage`, lists of 3 float32 `[B, h, w, K]` (decoder heads:
            `[B, H/4, W/4, K]`, see `at_output_grid`; zeros outside
            the stage's computed region); `regions`, list of 3 bool `[B, h, w]` (the pixels
            reaching each stage, which it decides and is trained on; stage 1's is all true; with
            a `halo` the stage computes them grown by it; with `pad_to`, the grid of the padded images);
            and at the input resolution: `labels` int32
            `[B, H, W]`, `probs` float32 `[B, H, W, K]`, `stage` uint8 `[B, H, W]` (1..3, the
            deciding stage).
        """
        dense = self._dense if dense is None else dense
        # ρ ≥ 1 known when tracing (a Python number, or the model's ρ): every pixel is forwarded,
        # so stages 2–3 run the plain dense network with all-true regions and no per-stage switch.
        static_rho = rho if isinstance(rho, (int, float)) else self._rho_value if rho is None else None
        dense = dense or (static_rho is not None and static_rho >= 1.0)
        x = self.preprocess(inputs)
        in_h, in_w = tf.shape(x)[1], tf.shape(x)[2]
        x = self.pad_images(x)
        pad_h, pad_w = tf.shape(x)[1], tf.shape(x)[2]
        if forward_all:
            rho = tf.constant(1.0)
        elif rho is None:
            rho = self.rho_tensor
        elif isinstance(rho, (int, float)):
            rho = tf.constant(check_rho(rho))
        else:
            rho = check_rho_tensor(rho)

        if path not in (None, "region", "dense"):
            raise ValueError(f"path must be None, 'region' or 'dense'; got {path!r}.")
        y1, low_level = self._stage1_features(x, training)

        def after_stage1(on):
            """Stage 1's head, stages 2–3 on path `on` and the combined outputs (a dict of tensors)."""
            s1 = self._stage1_head(y1, low_level, rho, training)
            low = {"low_level": low_level}
            full = tf.ones(tf.shape(y1)[:3], tf.bool)  # from the features, not the head: see below
            if on == "full":
                # ρ ≥ 1 forwards every pixel (`forward_region` gives the region itself), so the regions are
                # all-true by construction and the output is stage 3's: nothing downstream reads heads 1–2,
                # and a graph that returns only labels prunes them, as the dense network does.
                s2 = self.run_stage(2, y1, full, rho=rho, path="full", training=training, **low)
                s3 = self.run_stage(3, s2["features"], full, rho=rho, path="full", training=training, **low)
                r2 = r3 = full
                combined, stage_low = s3["probs"], tf.fill(tf.shape(s3["probs"])[:3], tf.constant(3, tf.uint8))
            else:
                s2 = self.run_stage(2, y1, s1["next_region"], rho=rho, path=on, training=training, **low)
                s3 = self.run_stage(3, s2["features"], s2["next_region"], rho=rho, path=on, training=training, **low)
                r2, r3 = s1["next_region"], s2["next_region"]
                fine = self.at_output_grid
                stage_low = fine(1 + tf.cast(r2, tf.uint8) + tf.cast(r3, tf.uint8), s1["probs"])  # [B, h', w']
                combined = tf.where(fine(r3, s1["probs"])[..., None], s3["probs"],
                                    tf.where(fine(r2, s1["probs"])[..., None], s2["probs"], s1["probs"]))
            # On the padded input, then cropped: the grid covers the padded image exactly.
            probs = tf.image.resize(combined, tf.stack([pad_h, pad_w]), method="bilinear")[:, :in_h, :in_w]
            return {
                "logits": [s["logits"] for s in (s1, s2, s3)],
                "probs_per_stage": [s["probs"] for s in (s1, s2, s3)],
                "regions": [full, r2, r3],
                "labels": tf.argmax(probs, axis=-1, output_type=tf.int32),
                "probs": probs,
                "stage": resize_nearest(stage_low, pad_h, pad_w)[:, :in_h, :in_w],
            }

        if path is None and not (dense or forward_all) and static_rho is None and self.dense_threshold is not None:
            # ρ is a tensor (as in the SavedModel signatures): at ρ ≥ 1 every pixel is forwarded, so stages 2–3
            # run densely with no per-stage switch (stage 1's features, the same either way, stay outside it).
            return tf.cond(rho >= 1.0, lambda: after_stage1("full"), lambda: after_stage1("auto"))
        every_pixel = forward_all or (static_rho is not None and static_rho >= 1.0)  # ρ ≥ 1 forwards them all
        return after_stage1(path or ("full" if every_pixel else "dense" if dense else "auto"))

    def _stage1_features(self, x, training):
        """Stage 1 without its head: `(features [B, h, w, C], low_level)` (low_level: decoder heads' stride-4
        features, else None)."""
        if self.decoder:
            return self.stages[0].features_and_low_level(x, training=training)
        return self.stages[0](x, training=training), None

    def _stage1_head(self, y, low_level, rho, training):
        """Stage 1's head on every pixel of its features `y`: `run_stage(1, ...)`'s dict."""
        kwargs = {"low_level": low_level} if self.decoder else {}
        index = RegionIndex(tf.ones(tf.shape(y)[:3], tf.bool), dense=True, full=True)
        probs, next_region, logits = self.heads[0](y, region=index, rho=rho, return_logits=True, training=training,
                                                   **kwargs)
        return {"features": y, "probs": probs, "next_region": next_region, "logits": logits, "low_level": low_level}

    def at_output_grid(self, cells, like):
        """A stage-grid map `[B, h, w, ...]` (regions, stage maps) on the heads' output grid (that of
        `like`, `[B, H', W', K]`): itself for plain heads; each cell repeated over its sub-pixels
        and cropped to `like` for decoder heads."""
        if self.upsample == 1:
            return cells
        return repeat_cells(cells, self.upsample, tf.shape(like)[1], tf.shape(like)[2])

    def call(self, inputs, rho=None, training=False):
        out = self.forward_details(inputs, rho=rho, training=training)
        p1, p2, p3 = out["probs_per_stage"]
        return {
            "labels": out["labels"],
            "probs": out["probs"],
            "stage": out["stage"],
            "stage1": p1,
            "stage2": p2,
            "stage3": p3,
        }

    def predict_multiscale(self, images, scales=(0.5, 0.75, 1.0), flip=False, rho=None, fusion="mean"):
        """Multi-scale (and flipped) testing, DeepLab's way, each pass a full cascade.

        Each scale's images are resized bilinearly, run through the cascade at ρ, and the
        probabilities resized back to the input size; `flip` adds each scale's mirror
        image (probabilities mirrored back and averaged with the scale's). The scales are
        fused by their mean (or DeepLab-v2's max). Graph-friendly (wrap in `tf.function`).

        Args:
            images: uint8 or float `[B, H, W, 3]` in 0..255.
            scales: positive numbers; 1.0 is the plain pass.
            flip: bool, also run each scale mirrored left-right.
            rho: optional ρ for every pass (the model's otherwise).
            fusion: "mean" or "max".

        Returns:
            dict with `labels` int32 `[B, H, W]`, `probs` float32 `[B, H, W, K]` (fused),
            `stage` uint8 `[B, H, W]` (the deciding stage of the unflipped pass at the scale
            nearest 1) and `stage_share` float32 `[S, 3]` (per scale, the share of its pixels
            decided at stages 1..3, unflipped pass).
        """
        scales = check_scales(scales)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}.")
        x = tf.convert_to_tensor(images)
        self.preprocess(x)  # the input contract's checks, before anything is resized
        size = tf.shape(x)[1:3]
        nearest = min(range(len(scales)), key=lambda i: abs(math.log(scales[i])))
        fused, shares, stage = None, [], None
        for i, scale in enumerate(scales):
            xs = x
            if scale != 1.0:
                scaled = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
                xs = tf.clip_by_value(tf.image.resize(tf.cast(x, tf.float32), scaled, method="bilinear"), 0.0, 255.0)
            passes = [(self(xs, rho=rho, training=False), False)]
            if flip:
                passes.append((self(tf.reverse(xs, axis=[2]), rho=rho, training=False), True))
            probs = [tf.reverse(out["probs"], axis=[2]) if mirrored else out["probs"] for out, mirrored in passes]
            probs = tf.add_n(probs) / len(probs)
            if scale != 1.0:
                probs = tf.image.resize(probs, size, method="bilinear")
            out = passes[0][0]
            shares.append(tf.stack([tf.reduce_mean(tf.cast(tf.equal(out["stage"], k), tf.float32)) for k in (1, 2, 3)]))
            if i == nearest:
                stage = resize_nearest(out["stage"], size[0], size[1])
            fused = probs if fused is None else (fused + probs if fusion == "mean" else tf.maximum(fused, probs))
        if fusion == "mean":
            fused = fused / len(scales)
        return {"labels": tf.argmax(fused, axis=-1, output_type=tf.int32), "probs": fused, "stage": stage,
                "stage_share": tf.stack(shares)}

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "stages": [keras.saving.serialize_keras_object(s) for s in self.stages],
            "heads": [keras.saving.serialize_keras_object(h) for h in self.heads],
            "num_classes": self.num_classes,
            "rho": self.rho,
            "ignore_class": self.ignore_class,
            "training_mode": self._training_mode,
            "dense_threshold": self.dense_threshold,
            "class_weights": self.class_weights,
            "loss_weights": list(self.loss_weights),
            "label_keep": None if self.label_keep is None else list(self.label_keep),
            "preprocessing": self.preprocessing,
            "loss_resolution": self.loss_resolution,
            "halo": self.halo,
            "pad_to": self.pad_to,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
