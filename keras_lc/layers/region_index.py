"""Per-stage index bookkeeping for region computation.

A *region* is a bool tensor `[B, H, W]`. `RegionIndex` turns it once per stage into
the coordinates of its pixels and caches, per (kernel, dilation), the flat indices of
their neighbourhoods, so that every region convolution of the stage shares them.

Shapes (PointRend-style shorthand):
    B, H, W: batch and spatial size of the stage's feature map.
    N: number of region pixels in the whole batch.
    C: channels.

Two modes compute the same numbers:
    - sparse (default): features of region pixels are held *compact*, `[N, C]`;
      neighbourhoods are gathered with `tf.gather`, and results are written back
      by one more gather through the inverse index (each pixel's row, or a zero row).
    - dense: "compact" features are full maps `[B, H, W, C]` whose values outside
      the region are never read; `scatter` multiplies by the region mask. This is
      the plain masked-dense reference, and the fast path above the crossover
      fraction where gathering costs more than computing everything.
"""

import tensorflow as tf


def _pair(value, name):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints, got {value!r}.")
    return value


def _expand_rows(values, inverse, flat):
    """Compact `[N, C]` -> `[len(inverse), C]`: row r is `values[inverse[r]]`, or zeros where
    `inverse[r] == N`. One gather from the values with a zero row appended; its custom gradient
    is the gather of the N rows at `flat` (each compact row's one position), not the segment sum
    over the whole map that `tf.gather`'s gradient is."""

    @tf.custom_gradient
    def expand(values):
        zero = tf.zeros(tf.stack([1, tf.shape(values)[1]]), values.dtype)
        out = tf.gather(tf.concat([values, zero], axis=0), inverse)

        def grad(upstream):
            return tf.gather(upstream, flat)

        return out, grad

    return expand(values)


class RegionIndex:
    """The indices of one region, computed once and shared by a stage's layers.

    Args:
        region: bool tensor `[B, H, W]`, the pixels to compute.
        dense: bool. If True, layers compute densely and mask (the reference path).
        full: bool (dense only). The region is known to cover every pixel (ρ ≥ 1 forwards every
            pixel): layers compute densely with no masking, the plain dense network.

    Attributes:
        region: the bool region `[B, H, W]`.
        mask: float32 `[B, H, W, 1]`, 1 inside the region.
        coords: int32 `[N, 3]` (b, y, x) of region pixels (sparse mode only).
        flat: int32 `[N]`, `b*H*W + y*W + x` (sparse mode only).
    """

    def __init__(self, region, dense=False, full=False):
        region = tf.convert_to_tensor(region)
        if region.dtype != tf.bool:
            raise ValueError(f"A region must be a bool tensor [B, H, W]; got dtype {region.dtype.name}.")
        if region.shape.rank is not None and region.shape.rank != 3:
            raise ValueError(f"A region must have shape [B, H, W]; got shape {region.shape}.")
        self.region = region
        self.dense = bool(dense)
        self.full = bool(full)
        if self.full and not self.dense:
            raise ValueError("RegionIndex(full=True) is a dense index (dense=True).")
        shape = tf.shape(region)
        self.batch, self.height, self.width = shape[0], shape[1], shape[2]
        self._neighbours = {}
        self._mask = None
        self._inverse = None
        if not self.dense:
            self.coords = tf.cast(tf.where(region), tf.int32)  # [N, 3]
            b, y, x = tf.unstack(self.coords, num=3, axis=1)
            self._b, self._y, self._x = b, y, x
            self.flat = (b * self.height + y) * self.width + x  # [N]

    # Computed on demand: the sparse hot path needs none of these full-map reductions.
    @property
    def mask(self):
        if self._mask is None:  # built once, on first use (the dense path's scatters share it)
            self._mask = tf.cast(self.region, tf.float32)[..., None]
        return self._mask

    @property
    def inverse(self):
        """int32 `[B*H*W + 1]`: each pixel's row in the compact features, N outside the
        region and for the padding row that `scatter_for_conv` appends (sparse mode only)."""
        if self._inverse is None:
            inside = tf.reshape(self.region, [-1])
            count = tf.shape(self.flat)[0]
            position = tf.cumsum(tf.cast(inside, tf.int32)) - 1  # tf.where lists pixels in this (row-major) order
            self._inverse = tf.concat([tf.where(inside, position, count), count[None]], axis=0)
        return self._inverse

    def _expand(self, values, rows):
        """Compact `[N, C]` -> `[rows, C]` flat rows (rows = B*H*W, or B*H*W + 1 with the padding
        row), zeros outside the region.

        One gather through `inverse` from the values with a zero row appended. Written by
        hand because on CPU it takes 0.55-0.8x the time of `tf.scatter_nd` from 30% of the
        pixels up and about the same below (benchmarks/scatter_paths.py); the custom gradient
        is the gather of N rows that `tf.scatter_nd`'s would be, not the segment sum over the
        whole map that `tf.gather`'s gradient is.
        """
        return _expand_rows(values, self.inverse if rows is None else self.inverse[:rows], self.flat)

    # ----------------------------------------------------------------- checks
    def check_features(self, x, name="features"):
        """Raise a clear ValueError if `x` [B, H, W, C] does not match the region."""
        if x.shape.rank is not None and x.shape.rank != 4:
            raise ValueError(f"{name} must have shape [B, H, W, C]; got shape {x.shape}.")
        want = self.region.shape
        got = x.shape[:3]
        for w, g in zip(want, got):
            if w is not None and g is not None and w != g:
                raise ValueError(
                    f"The region has shape {want} but {name} have shape {x.shape}: "
                    "the region must be [B, H, W] of the features."
                )

    def masked(self, values):
        """Dense mode: `values` `[B, H, W, C]` with zeros outside the region (itself for a full index)."""
        return values if self.full else values * tf.cast(self.mask, values.dtype)

    # ------------------------------------------------------- compact <-> dense
    def gather(self, x):
        """Dense `[B, H, W, C]` (or a padded flat map) -> compact (values at region pixels)."""
        if self.dense:
            return x
        flat_x = x if x.shape.rank == 2 else tf.reshape(x, [-1, tf.shape(x)[-1]])
        return tf.gather(flat_x, self.flat)

    def scatter(self, values):
        """Compact -> dense `[B, H, W, C]` with zeros outside the region."""
        if self.dense:
            return self.masked(values)
        shape = tf.stack([self.batch, self.height, self.width, tf.shape(values)[-1]])
        return tf.reshape(self._expand(values, self.batch * self.height * self.width), shape)

    def scatter_for_conv(self, values):
        """Compact values -> the input of a following region conv, zeros outside the region.

        Sparse: the flat map `[B*H*W + 1, C]` with the zero padding row already appended, so the
        next conv gathers from it without copying the map again. Dense: the masked map.
        """
        if self.dense:
            return self.scatter(values)
        return self._expand(values, None)

    def scatter_add(self, x, values):
        """`x` plus `values` at region pixels, `x` unchanged elsewhere."""
        if self.dense:
            return x + self.masked(values)
        return tf.tensor_scatter_nd_add(x, self.coords, values)

    def scatter_update(self, x, values):
        """`x` with its region pixels replaced by `values` (compact), unchanged elsewhere."""
        if self.full:
            return values
        if self.dense:
            mask = tf.cast(self.mask, values.dtype)
            return x * (1.0 - mask) + values * mask
        return tf.tensor_scatter_nd_update(x, self.coords, values)

    # ------------------------------------------------- dilation phases (sparse mode only)
    # A convolution dilated by d on a map is d_h·d_w undilated convolutions, one on each phase sub-grid
    # x[py::d_h, px::d_w] with its own zero padding (`tf.nn.depthwise_conv2d` does exactly this with a
    # SpaceToBatch / BatchToSpace copy of the map on each side). Writing the compact rows straight into
    # that layout, and reading them back from it, skips both copies.
    def _phase_shape(self, dilation):
        dh, dw = dilation
        return dh * dw * self.batch, (self.height + dh - 1) // dh, (self.width + dw - 1) // dw

    def phase_flat(self, dilation):
        """int32 `[N]`: each region pixel's flat position in the phase layout of `dilation`
        (`[d_h·d_w·B, ⌈H/d_h⌉, ⌈W/d_w⌉]`, phase-major)."""
        key = ("phase_flat", *dilation)
        if key not in self._neighbours:
            dh, dw = dilation
            _, hp, wp = self._phase_shape(dilation)
            phase = (self._y % dh) * dw + self._x % dw
            self._neighbours[key] = ((phase * self.batch + self._b) * hp + self._y // dh) * wp + self._x // dw
        return self._neighbours[key]

    def _phase_inverse(self, dilation):
        """int32 `[d_h·d_w·B·⌈H/d_h⌉·⌈W/d_w⌉]`: each phase-layout cell's compact row, N outside the
        region and on the padding cells beyond the image."""
        key = ("phase_inverse", *dilation)
        if key not in self._neighbours:
            dh, dw = dilation
            pb, hp, wp = self._phase_shape(dilation)
            cell = tf.range(pb * hp * wp)
            j, i, rest = cell % wp, (cell // wp) % hp, cell // (wp * hp)
            b, phase = rest % self.batch, rest // self.batch
            y, x = i * dh + phase // dw, j * dw + phase % dw
            inside = (y < self.height) & (x < self.width)
            pixel = tf.where(inside, (b * self.height + y) * self.width + x, self.batch * self.height * self.width)
            self._neighbours[key] = tf.gather(self.inverse, pixel)  # the pixel after the map: row N
        return self._neighbours[key]

    def scatter_phases(self, values, dilation):
        """Compact `[N, C]` -> the phase layout `[d_h·d_w·B, ⌈H/d_h⌉, ⌈W/d_w⌉, C]` of the map with
        zeros outside the region: an undilated 'SAME' conv on it is the dilated conv on the map."""
        pb, hp, wp = self._phase_shape(dilation)
        out = _expand_rows(values, self._phase_inverse(dilation), self.phase_flat(dilation))
        return tf.reshape(out, tf.stack([pb, hp, wp, tf.shape(values)[-1]]))

    def gather_phases(self, x, dilation):
        """A phase-layout map `[d_h·d_w·B, ⌈H/d_h⌉, ⌈W/d_w⌉, C]` -> compact `[N, C]` at this region's pixels."""
        return tf.gather(tf.reshape(x, [-1, tf.shape(x)[-1]]), self.phase_flat(dilation))

    def neighbours(self, kernel_size, dilation_rate):
        """Flat neighbour indices `[N, kh*kw]` into the map with one zero row appended.

        A neighbour outside the image points at index B*H*W, the appended zero row: this is
        'same' zero padding at a cost proportional to N, with no mask to multiply (cheaper than
        padding the whole map per conv, or masking the gathered patches). Cached per
        (kernel, dilation), so the convs of a stage share it.
        """
        if self.dense:
            raise RuntimeError("neighbours() is only defined for sparse regions.")
        kh, kw = kernel_size
        dh, dw = dilation_rate
        key = (kh, kw, dh, dw)
        if key not in self._neighbours:
            oy = tf.constant([(i - kh // 2) * dh for i in range(kh) for _ in range(kw)], tf.int32)
            ox = tf.constant([(j - kw // 2) * dw for _ in range(kh) for j in range(kw)], tf.int32)
            ny = self._y[:, None] + oy[None, :]  # [N, kh*kw]
            nx = self._x[:, None] + ox[None, :]
            valid = (ny >= 0) & (ny < self.height) & (nx >= 0) & (nx < self.width)
            flat = (self._b[:, None] * self.height + ny) * self.width + nx
            pad_row = self.batch * self.height * self.width
            self._neighbours[key] = tf.where(valid, flat, pad_row)
        return self._neighbours[key]

    def compact_neighbours(self, kernel_size, dilation_rate):
        """Rows of each region pixel's neighbours in the compact features `[N, kh*kw]`.

        A neighbour outside the region or the image points at row N, the zero row a caller
        appends to the compact `[N, C]` values: region-conv semantics (zeros outside M) read
        straight from the compact trunk, with no dense map written. Cached like `neighbours`.
        """
        key = ("compact", *kernel_size, *dilation_rate)
        if key not in self._neighbours:
            self._neighbours[key] = tf.gather(self.inverse, self.neighbours(kernel_size, dilation_rate))
        return self._neighbours[key]

    def gather_neighbourhoods(self, x, kernel_size, dilation_rate):
        """Dense `[B, H, W, C]` (or the padded flat map of `scatter_for_conv`) -> `[N, kh*kw*C]`,
        ordered (ky, kx, c) like a Conv2D kernel."""
        flat = self.neighbours(kernel_size, dilation_rate)
        channels = tf.shape(x)[-1]
        if x.shape.rank == 2:  # already flat with the zero row
            flat_x = x
        else:
            flat_x = tf.reshape(x, [-1, channels])
            flat_x = tf.concat([flat_x, tf.zeros([1, channels], x.dtype)], axis=0)
        patches = tf.gather(flat_x, flat)  # [N, kh*kw, C]
        kh, kw = kernel_size
        return tf.reshape(patches, [-1, kh * kw * channels])


def pad_up(size, multiple):
    """How much to add to `size` (≥ 0; a Python int or an int tensor) to reach a multiple of `multiple`.

    Written `(multiple - size % multiple) % multiple`, not `(-size) % multiple`: tf2onnx 1.17 converts an int32
    floor-mod to `x - (x / y) * y` with ONNX's truncating `Div`, so `(-360) % 16` is -8 in the ONNX graph, not 8
    (negative pads, which crop: 352-row labels for a 360-row frame). With non-negative operands the two agree.
    """
    return (multiple - size % multiple) % multiple


def to_phases(x, dilation):
    """A map `[B, H, W, C]` -> its dilation-phase layout `[d_h·d_w·B, ⌈H/d_h⌉, ⌈W/d_w⌉, C]` (zero-padded at
    the bottom and right): a conv dilated by `dilation` on the map is the undilated conv on this layout
    with 'SAME' zero padding, provided the padding cells hold zeros. One SpaceToBatch copy."""
    dh, dw = dilation
    shape = tf.shape(x)
    pads = [[0, pad_up(shape[1], dh)], [0, pad_up(shape[2], dw)]]
    return tf.space_to_batch(x, [dh, dw], pads)


def from_phases(x, dilation, height, width):
    """The inverse of `to_phases`: `[d_h·d_w·B, ⌈H/d_h⌉, ⌈W/d_w⌉, C]` -> `[B, height, width, C]`."""
    dh, dw = dilation
    crops = [[0, pad_up(height, dh)], [0, pad_up(width, dw)]]
    return tf.batch_to_space(x, [dh, dw], crops)


def as_region_index(region, dense=False):
    """Accept a bool region tensor or a RegionIndex; return a RegionIndex."""
    if isinstance(region, RegionIndex):
        return region
    if region is None:
        raise ValueError("A region is required: a bool tensor [B, H, W] or a RegionIndex.")
    return RegionIndex(region, dense=dense)


def repeat_cells(x, factor, height, width):
    """Each cell of `[B, h, w, ...]` repeated over a `factor × factor` block, cropped to `[B, height, width, ...]`
    (height ≤ factor·h): a stage-grid region or stage map on a finer output grid, exactly."""
    x = tf.repeat(tf.repeat(x, factor, axis=1), factor, axis=2)
    return x[:, :height, :width]


def grid_padding(height, width, pad_to):
    """`(rows, columns)` to add at the bottom/right so that both sizes are multiples of `pad_to`
    (`(0, 0)` when `pad_to` is None or 0). Python ints or int tensors alike."""
    if not pad_to:
        return 0, 0
    return pad_up(height, pad_to), pad_up(width, pad_to)


def resize_nearest(x, height, width):
    """Nearest-neighbour resize of `[B, H, W, ...]` by index gathers (any dtype, exact).

    Used for label maps and stage maps, where interpolation would invent values.
    """
    in_h, in_w = tf.shape(x)[1], tf.shape(x)[2]

    def centres(n_in, n_out):
        pos = (tf.range(n_out, dtype=tf.float32) + 0.5) * tf.cast(n_in, tf.float32) / tf.cast(n_out, tf.float32)
        return tf.minimum(tf.cast(tf.floor(pos), tf.int32), n_in - 1)

    x = tf.gather(x, centres(in_h, height), axis=1)
    return tf.gather(x, centres(in_w, width), axis=2)


def grow_region(region, halo):
    """The cells within `halo` cells of a region (Chebyshev distance): a (2·halo + 1)² max-pool.

    Args:
        region: bool `[B, h, w]`.
        halo: int ≥ 0; 0 returns `region` itself.

    Returns:
        bool `[B, h, w]`, a superset of `region` (per image: an empty region stays empty).
    """
    if halo == 0:
        return region
    size = 2 * int(halo) + 1
    pooled = tf.nn.max_pool2d(tf.cast(region, tf.float32)[..., None], size, 1, "SAME")
    return pooled[..., 0] > 0
