"""The training side of LayerCascade: the ρ-masked per-stage losses, the train/test steps, the metric trackers'
updates, and the one-line errors of fit/evaluate. A mixin, so that `cascade.py` holds the forward pass."""

import contextlib

import tensorflow as tf

from keras_lc._compat import in_multi_worker_mode
from keras_lc.layers.region_index import grid_padding, resize_nearest
from keras_lc.layers.stage_head import RHO_ERROR
from keras_lc.losses import masked_sparse_categorical_crossentropy_sum
from keras_lc.models import folding

_LABEL_ERROR = "keras_lc: labels out of range"
_SHAPE_ERROR = "keras_lc: labels do not match the images"
_IMAGE_ERROR = "keras_lc: images must be finite values in 0..255"
_PAIR_ERROR = "keras_lc: image and label sizes differ"  # raised by the dataset readers


@contextlib.contextmanager
def clear_errors():
    """Turn the graph-side checks (labels, images, ρ, the dataset readers') into the one-line
    ValueError a user expects."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        for marker in (_LABEL_ERROR, _SHAPE_ERROR, _IMAGE_ERROR, _PAIR_ERROR, RHO_ERROR):
            if marker in str(e.message):
                detail = str(e.message).split(marker, 1)[1].split("\n")[0]
                raise ValueError(f"{marker}{detail}".replace("] [", " ").rstrip("]")) from None
        raise


class CascadeSteps:
    """`train_step` / `test_step` of a `LayerCascade` (which provides `forward_details`, the settings and the
    trackers): forward with training=True, per-stage masked losses, gradients, trackers."""
    def _unpack(self, data):
        if isinstance(data, (tuple, list)) and len(data) >= 2:
            images, labels = data[0], data[1]
        else:
            raise ValueError("LayerCascade.fit/evaluate need (images, labels) pairs; got images only.")
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 4 and labels.shape[-1] == 1:
            labels = labels[..., 0]
        if labels.shape.rank is not None and labels.shape.rank != 3:
            raise ValueError(f"Labels must be [B, H, W] (or [B, H, W, 1]); got shape {tuple(labels.shape)}.")
        if not labels.dtype.is_integer:
            raise ValueError(f"Labels must be an integer tensor; got dtype {labels.dtype.name}.")
        images = tf.convert_to_tensor(images)
        for i, (a, b) in enumerate(zip(images.shape[1:3], labels.shape[1:3])):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"Labels {tuple(labels.shape)} do not match the images {tuple(images.shape)} in height/width."
                )
        same_size = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(images)[1:3], tf.shape(labels)[1:3])),
            [f"{_SHAPE_ERROR} in height/width: labels", tf.shape(labels), "images", tf.shape(images)],
        )
        with tf.control_dependencies([same_size]):
            labels = tf.cast(labels, tf.int32)
        invalid = tf.logical_or(labels < 0, labels >= self.num_classes)
        if self.ignore_class is not None:
            invalid = tf.logical_and(invalid, tf.not_equal(labels, self.ignore_class))
        allowed = f"[0, {self.num_classes})" + (
            f" or the ignore label {self.ignore_class}" if self.ignore_class is not None else ""
        )
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(invalid)),
            [f"{_LABEL_ERROR}: labels must be in {allowed}; found values from", tf.reduce_min(labels),
             "to", tf.reduce_max(labels)],
        )
        with tf.control_dependencies([check]):
            labels = tf.identity(labels)
        return images, labels

    def stage_losses(self, out, labels):
        """Per-stage losses: stage k's sparse CE over the valid pixels of its region, at the
        stage grid or at the labels' resolution (`loss_resolution`).

        Under a tf.distribute strategy each replica divides its sum by the pixel count
        of the *global* batch, so the replicas' losses (and their gradients, which the
        optimizer sums) add up to the loss of the global batch.
        """
        logits, regions = out["logits"], out["regions"]
        regions = [self.at_output_grid(r, logits[0]) for r in regions]  # decoder heads: sub-pixels
        inside = None
        if self.pad_to:
            # The grid covers the images padded by `pad_images`: the labels are padded alike, the padding
            # kept out of the losses.
            dh, dw = grid_padding(tf.shape(labels)[1], tf.shape(labels)[2], self.pad_to)
            pads = [[0, 0], [0, dh], [0, dw]]
            inside = tf.pad(tf.ones_like(labels, tf.bool), pads)
            labels = tf.pad(labels, pads)
        if self.loss_resolution == "input":
            size = tf.shape(labels)[1:3]
            logits = [tf.image.resize(x, size, method="bilinear") for x in logits]
            regions = [resize_nearest(r, size[0], size[1]) for r in regions]
        else:
            grid = tf.shape(logits[0])[1], tf.shape(logits[0])[2]
            labels = resize_nearest(labels, *grid)
            inside = None if inside is None else resize_nearest(inside, *grid)
        if inside is not None:
            regions = [tf.logical_and(r, inside) for r in regions]
        ctx = tf.distribute.get_replica_context()
        losses = []
        for k in range(3):
            total, count = masked_sparse_categorical_crossentropy_sum(
                labels, logits[k], regions[k], self.ignore_class, self.class_weights
            )
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
            losses.append(tf.math.divide_no_nan(total, count))
        return losses

    def _drop_labels(self, out):
        """Keep each pixel in stage k's loss with probability label_keep[k] (nested)."""
        u = tf.random.uniform(tf.shape(out["regions"][0]))
        regions = [tf.logical_and(r, u < keep) for r, keep in zip(out["regions"], self.label_keep)]
        return {**out, "regions": regions}

    @staticmethod
    def _global(values):
        """Replica partial losses -> the global-batch value on every replica (for logs)."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return values
        return [ctx.all_reduce(tf.distribute.ReduceOp.SUM, v) for v in values]

    def _update_metrics(self, total, losses, out, labels):
        for tracker, value in zip(self.loss_trackers, [total, *losses]):
            tracker.update_state(value)
        stage = out["stage"]
        for k, tracker in enumerate(self.share_trackers, start=1):
            tracker.update_state(tf.reduce_mean(tf.cast(tf.equal(stage, k), tf.float32)))
        self.miou_metric.update_state(labels, out["labels"])
        logs = {m.name: m.result() for m in self.metrics}
        strategy = tf.distribute.get_strategy()
        if in_multi_worker_mode(strategy):
            # Keras reduces multi-worker logs with MEAN over axis 0, which scalars lack; the values
            # are already global (metrics are aggregated across replicas), so a [1] shape is exact.
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    @property
    def metrics(self):
        return [*self.loss_trackers, self.miou_metric, *self.share_trackers]

    def train_step(self, data):
        folding.check_not_folded(self, "fit")  # at trace time: a step traced there would read frozen weights
        images, labels = self._unpack(data)
        with tf.GradientTape() as tape:
            initial = self._training_mode == "initial"
            out = self.forward_details(images, training=True, forward_all=initial, path=None if initial else "region")
            if self.label_keep is not None:
                out = self._drop_labels(out)
            losses = self.stage_losses(out, labels)
            total = tf.add_n([w * loss for w, loss in zip(self.loss_weights, losses) if w > 0])
            if self.losses:
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                total = total + tf.add_n(self.losses) / replicas
            scaled = self.optimizer.scale_loss(total) if hasattr(self.optimizer, "scale_loss") else total
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        total, *losses = self._global([total, *losses])
        return self._update_metrics(total, losses, out, labels)

    def test_step(self, data):
        images, labels = self._unpack(data)
        out = self.forward_details(images, training=False)
        losses = self._global(self.stage_losses(out, labels))
        return self._update_metrics(tf.add_n(losses), losses, out, labels)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):  # a Keras internal: tests/test_compat.py
        # The model is built at construction and compiles no loss or metrics, so only the
        # optimizer needs building, in the strategy's scope. (Keras' generic path averages a
        # distributed data batch first, which fails under MultiWorkerMirroredStrategy.)
        if self.built and self.optimizer is not None:
            if not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, *args, **kwargs):
        with clear_errors():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with clear_errors():
            return super().evaluate(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        with clear_errors():
            return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        with clear_errors():
            return super().test_on_batch(*args, **kwargs)
