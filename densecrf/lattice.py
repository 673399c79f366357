"""The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in PyTorch.

A Gaussian filter in a d-dimensional feature space, ``out_i = sum_j k(f_i, f_j) x_j`` with
``k ~ exp(-|f_i - f_j|^2 / 2)``, approximated in three linear steps: *splat* each point's
value onto the d+1 vertices of the lattice simplex that encloses it (barycentric weights),
*blur* the vertex values with a [1/2 1 1/2] kernel along each of the d+1 lattice axes, and
*slice* the result back at the points with the same weights. The geometry (which vertices,
which weights, which neighbours) depends only on the features, so it is built once per image
and reused for every filtering of the mean-field iterations.

The construction follows Krähenbühl's ``permutohedral.cpp`` (the code pydensecrf2 runs)
step for step in float32 — elevation order, round-half-to-even rounding, rank and barycentric
arithmetic, the blur order and the slice constant ``1 / (1 + 2^-d)`` — so both build the same
lattice and filter to within float32 summation order. Device-agnostic: the lattice lives on
the device of its features. Several images share one lattice with ``groups`` (an image index
per point): vertices of different groups never meet, so one filter call serves a batch.

Each linear step is one ``embedding_bag`` (a gather and weighted sum of rows; on CPU two to
three times faster than a sparse CSR product): splat sums each vertex's points in point order
(as the C++ accumulates them), the blur applies two lattice axes per step (their product has
about 4 entries a row), slice sums each point's d+1 vertices. Values are (rows, channels).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LatticeSum", "PermutohedralLattice", "dense_gaussian_filter", "lattice_filter"]

PACK_LIMIT = 2 ** 62  # keys whose mixed-radix code reaches this are compared coordinate by coordinate


def _scale_factors(d: int) -> torch.Tensor:
    """Diagonal of the elevation matrix E times the filter's inverse std (p. 5-6 of Adams et al.)."""
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))  # a float in the C++
    return torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)], dtype=torch.float32)


def _bags(x: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row b of the result: sum of ``weights[k] * x[index[k]]`` over k in ``offsets[b]:offsets[b+1]``."""
    return F.embedding_bag(index, x, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)


class PermutohedralLattice:
    """The lattice of ``features`` (N x d, already divided by the kernel's standard deviations).

    ``groups`` (N, int) keeps points of different groups (images of a batch) apart.
    ``filter(x)`` (x: N x C) returns the lattice approximation of ``sum_j k(f_i, f_j) x_j``
    scaled as Krähenbühl's code scales it; ``filter(x, reverse=True)`` is its transpose
    (blur axes in reverse order), which is what the backward pass needs.
    """

    def __init__(self, features: torch.Tensor, groups: torch.Tensor | None = None):
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"features must be N x d, got shape {tuple(features.shape)}")
        f = features.detach().to(torch.float32)
        n, d = f.shape
        self.num_points, self.dim = n, d
        self.alpha = 1.0 / (1.0 + 2.0 ** -d)  # the slice constant ("write Andrew" in the C++)
        rem0, rank, coord_of_rank, self.weights = _simplices(f, d)
        self.offsets, order, starts, self._nbrs = _index(rem0, rank, coord_of_rank, groups, d)
        self.num_vertices = starts.numel() - 1
        # Splat: vertex v sums points order[starts[v]:starts[v+1]] (point-major flat indices);
        # slice: point i sums its vertices offsets[i].
        self._splat = (torch.div(order, d + 1, rounding_mode="floor"), starts, order)
        self._slice = (self.offsets.reshape(-1),
                       torch.arange(0, n * (d + 1) + 1, d + 1, dtype=order.dtype, device=f.device))
        self._by_dtype: dict = {}
        self._blur_by_key: dict = {}

    def _weights_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(splat weights in bag order, flat slice weights times alpha) in ``dtype``, built once per dtype."""
        if dtype not in self._by_dtype:
            w = self.weights.to(dtype)
            self._by_dtype[dtype] = (_take(w, self._splat[2]), (w * self.alpha).reshape(-1))
        return self._by_dtype[dtype]

    def _blur_steps(self, dtype: torch.dtype, reverse: bool) -> list:
        """The blur as (index, offsets, weights) bag operators to apply in turn, built once per
        dtype and direction: consecutive axes in pairs, each pair's product written out (up to 9
        entries a row, about 4 present), an odd axis alone. The reverse (transposed) blur runs
        the axes backwards; each axis' operator is symmetric."""
        key = (dtype, reverse)
        if key not in self._blur_by_key:
            order = list(range(self.dim, -1, -1)) if reverse else list(range(self.dim + 1))
            steps = _map(lambda k: _blur_operator(self._nbrs, order[k:k + 2], dtype), range(0, len(order), 2),
                         self._nbrs.device)
            self._blur_by_key[key] = steps
        return self._blur_by_key[key]

    def splat(self, x: torch.Tensor) -> torch.Tensor:
        """Vertex values (M x C): each vertex's barycentric-weighted sum of its points' rows of ``x``."""
        pts, starts, _ = self._splat
        return _bags(x.contiguous(), pts, starts, self._weights_as(x.dtype)[0])

    def blur(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """[1/2 1 1/2] along each lattice axis in turn (``reverse``: the last axis first)."""
        for index, offsets, w in self._blur_steps(values.dtype, reverse):
            values = _bags(values, index, offsets, w)
        return values

    def slice(self, values: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Per point: alpha times the barycentric-weighted sum of its d+1 vertex rows; ``scale``
        (N x 1) multiplies each point's weights (a per-point factor folded into the same pass)."""
        w = self._weights_as(values.dtype)[1]
        if scale is not None:
            w = (w.reshape(self.num_points, -1) * scale).reshape(-1)
        return _bags(values, *self._slice, w)

    def filter(self, x: torch.Tensor, reverse: bool = False, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Splat, blur, slice: the lattice Gaussian filter of ``x`` (N x C) -> N x C.

        ``reverse`` runs the blur axes in the opposite order: the transposed filter. ``scale``
        (N x 1) multiplies each output row (folded into the slice weights).
        """
        return self.slice(self.blur(self.splat(x), reverse), scale)


def _simplices(f: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each point's enclosing simplex: the remainder-0 corner's first d coordinates ((d, N) long),
    the rank of each of the d+1 coordinates and the coordinate of each rank ((d+1, N) long), and
    the barycentric weights (N x (d+1)).

    Rows are coordinates (one contiguous vector per coordinate) so each step is a vector op.
    """
    n, dev = f.shape[0], f.device
    # Elevate onto the hyperplane x_0 + ... + x_d = 0 (y = E f), accumulated as the C++ does.
    cf = (f * _scale_factors(d).to(dev)).t()
    elevated = torch.empty(d + 1, n, dtype=torch.float32, device=dev)
    sm = torch.zeros(n, dtype=torch.float32, device=dev)
    for j in range(d, 0, -1):
        elevated[j] = sm - float(j) * cf[j - 1]
        sm = sm + cf[j - 1]
    elevated[0] = sm

    # Nearest remainder-0 point (coordinates multiples of d+1), round half to even as SSE does.
    down = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
    v = torch.round(elevated * down)
    rem0 = v * float(d + 1)
    total = v.sum(0).to(torch.int16)  # exact: small integers

    # Rank of each coordinate's residual, as the C++ counts it: rank_i = #{j: res_j > res_i} +
    # #{j < i: res_j == res_i}; one comparison per pair i < j serves both.
    res = elevated - rem0
    rank = torch.zeros(d + 1, n, dtype=torch.int16, device=dev)
    for i in range(d + 1):
        for j in range(i + 1, d + 1):
            gt = res[j] > res[i]
            rank[i] += gt
            rank[j] += ~gt
    # Bring the point back onto the plane when the rounded coordinates do not sum to 0.
    rank += total
    wrap = ((rank < 0).to(torch.int16) - (rank > d).to(torch.int16)) * (d + 1)
    rank += wrap
    rem0 += wrap
    rank = rank.to(torch.long)
    coord_of_rank = torch.empty_like(rank).scatter_(0, rank, torch.arange(d + 1, device=dev)[:, None].expand(d + 1, n))

    # Barycentric coordinates (p. 10 of Adams et al.): b[d - rank_i] += v_i, b[d - rank_i + 1] -= v_i,
    # then b[0] += 1 + b[d+1]. Each slot gets one term of each sign: a difference, exactly.
    by_rank = torch.gather((elevated - rem0) * down, 0, coord_of_rank)  # v of the coordinate of rank q
    slots = torch.cat([(by_rank[d] + (1.0 - by_rank[0]))[None],
                       (by_rank[:d] - by_rank[1:]).flip(0)])  # slot t >= 1: v(rank d-t) - v(rank d-t+1)
    return rem0[:d].to(torch.long), rank, coord_of_rank, slots.t().contiguous()


def _map(fn: Callable, items: Sequence, device: torch.device) -> list:
    """``[fn(x) for x in items]``; on CPU with several intra-op threads, on that many Python
    threads: the build's numpy steps (searches, gathers, compressions) release the GIL, so
    independent ones (the lattice axes, the blur operators) share the cores as torch's own
    operations do. Results in order; the same values either way."""
    items = list(items)
    workers = min(len(items), torch.get_num_threads()) if torch.device(device).type == "cpu" else 1
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.reshape(-1)[index]`` (numpy's on CPU: several times faster than torch's integer gathers)."""
    if table.device.type == "cpu":
        return torch.from_numpy(np.take(table.numpy(), index.numpy()))
    return torch.take(table, index)


def _put(index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[index] = values`` into a new tensor, ``index`` a permutation (numpy's on CPU: faster)."""
    if index.device.type == "cpu":
        out = np.empty(index.numel(), dtype=values.numpy().dtype)
        out[index.numpy()] = values.numpy()
        return torch.from_numpy(out)
    return torch.empty_like(values).index_copy_(0, index, values)


def _sort_codes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable sort of non-negative int64 ``codes``: (sorted codes, their flat positions).

    torch's stable sort of a 1-D integer tensor is a radix sort on CPU (about twice as fast
    as numpy's sort of the codes with their positions packed in the low bits).
    """
    return torch.sort(codes, stable=True)


def _search(sorted_values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Position of each query in ``sorted_values``, or len(sorted_values) when absent."""
    m = sorted_values.numel()
    if sorted_values.device.type == "cpu":  # numpy's search exploits sorted queries: about twice as fast
        pos = torch.from_numpy(np.searchsorted(sorted_values.numpy(), queries.numpy()))
    else:
        pos = torch.searchsorted(sorted_values, queries)
    pos.clamp_(max=m - 1)
    return pos.masked_fill_(_take(sorted_values, pos) != queries, m)


def _index(rem0: torch.Tensor, rank: torch.Tensor, coord_of_rank: torch.Tensor, groups: torch.Tensor | None,
           d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Number the simplex vertices of every point and find each vertex's neighbours along each axis.

    Vertex r of a point's simplex has key rem0 + row r of the canonical simplex (its first d
    coordinates; the last is minus their sum), plus the point's group. Returns offsets
    (N x (d+1) vertex ids), the splat order (point-major flat indices n*(d+1)+r grouped by
    vertex, in point order within a vertex) with each vertex's start in it (M+1), and the
    neighbours ((d+1) x 2 x (M+1); a missing neighbour and the padding entry are M).
    """
    n, dev = rem0.shape[1], rem0.device
    # Key coordinate k of vertex r: rem0_k + r - (d+1) [rank_k > d - r], within rem0_k +- d; the
    # radix leaves d+1 more on each side so that a neighbour's code (+-d) never wraps.
    lo = rem0.amin(1) - (2 * d + 1)
    radix = (rem0.amax(1) + (2 * d + 1) - lo + 1).tolist()
    if groups is not None:
        groups = groups.to(device=dev, dtype=torch.long)
        radix.append(int(groups.max()) + 1)
    k = len(radix)
    if math.prod(radix) < PACK_LIMIT:  # one int64 code per key (mixed radix), searched by value
        strides = [1] * k
        for i in range(k - 2, -1, -1):
            strides[i] = strides[i + 1] * radix[i + 1]
        base = (rem0[0] - lo[0]) * strides[0]
        for i in range(1, d):
            base += (rem0[i] - lo[i]) * strides[i]
        if groups is not None:
            base += groups * strides[d]
        # Vertex r+1 is vertex r plus 1 in every coordinate, minus d+1 in the one of rank d - r
        # (none of the first d when that is the last coordinate).
        ones = sum(strides[:d])
        drop = _take(torch.tensor(strides[:d] + [0], device=dev) * (d + 1), coord_of_rank)
        codes = torch.empty(n, d + 1, dtype=torch.long, device=dev)
        codes[:, 0] = base
        for r in range(d):
            base += ones
            base -= drop[d - r]
            codes[:, r + 1] = base
        sorted_codes, order = _sort_codes(codes.reshape(-1))
        first = torch.ones_like(sorted_codes, dtype=torch.bool)
        first[1:] = sorted_codes[1:] != sorted_codes[:-1]
        verts = _compress(sorted_codes, first)
        m = verts.numel()

        def lookup(delta: list[int]) -> torch.Tensor:
            return _search(verts, verts + sum(dl * st for dl, st in zip(delta, strides)))
    else:  # too wide for one int64: compare keys coordinate by coordinate
        r = torch.arange(d + 1, device=dev)
        keys = rem0.t()[:, None, :] + r[None, :, None] - (d + 1) * (rank.t()[:, None, :d] > (d - r)[None, :, None]).to(torch.long)
        if groups is not None:
            keys = torch.cat([keys, groups.reshape(n, 1, 1).expand(n, d + 1, 1)], 2)
        vkeys, inverse = torch.unique(keys.reshape(-1, k), dim=0, sorted=True, return_inverse=True)
        m = vkeys.shape[0]
        sorted_ids, order = torch.sort(inverse, stable=True)
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]

        def lookup(delta: list[int]) -> torch.Tensor:
            allk, inv = torch.unique(torch.cat([vkeys, vkeys + torch.tensor(delta, device=dev)]), dim=0,
                                     sorted=True, return_inverse=True)
            lut = torch.full((allk.shape[0],), m, dtype=torch.long, device=dev)
            lut[inv[:m]] = torch.arange(m, device=dev)
            return lut[inv[m:]]

    # Number the vertices in the order the points first touch them (as the C++ hash table does):
    # neighbouring points then share nearby vertex rows, which keeps splat and slice in cache
    # (in key order the slice is several times slower). Within a vertex's run of the sorted
    # list, the first entry is the smallest flat index, its first touch.
    starts = torch.nonzero(first).reshape(-1)
    old_of_new = _sort_codes(_take(order, starts))[1]
    ids = torch.arange(m + 1, device=dev)
    new_of_old = torch.empty_like(ids)
    new_of_old[old_of_new] = ids[:m]
    new_of_old[m] = m
    sizes = _take(torch.diff(starts, append=torch.tensor([order.numel()], device=dev)), old_of_new)
    new_starts = torch.cumsum(sizes, 0) - sizes

    def renumber() -> tuple[torch.Tensor, torch.Tensor]:
        # The splat order grouped by new vertex number, and each entry's vertex (offsets).
        shift = torch.repeat_interleave(_take(starts, old_of_new) - new_starts, sizes)
        new_order = _take(order, shift.add_(torch.arange(order.numel(), device=dev)))
        return new_order, _put(new_order, torch.repeat_interleave(ids[:m], sizes))

    def along(j: int) -> torch.Tensor:
        # Along axis j: n1 = every coordinate -1 and coordinate j + d; n2 the opposite, so
        # b = n1(a) exactly when a = n2(b): one search serves both. Searched in key order,
        # then renumbered.
        delta = [-1] * d + [0] * (k - d)  # the group does not move
        if j < d:
            delta[j] = d
        return _take(new_of_old, _take(lookup(delta), old_of_new))

    # The renumbering and the d+1 searches are independent: one thread-pool round.
    done = _map(lambda task: task(), [renumber] + [lambda j=j: along(j) for j in range(d + 1)], dev)
    (order, offsets), found = done[0], done[1:]
    nbrs = torch.full((d + 1, 2, m + 1), m, dtype=torch.long, device=dev)
    for j, n1 in enumerate(found):
        nbrs[j, 0, :m] = n1
        nbrs[j, 1].scatter_(0, n1, ids[:m])  # entries aimed at m land on the padding entry ...
        nbrs[j, 1, m] = m  # ... which stays "missing"
    starts = torch.cat([new_starts, torch.tensor([order.numel()], device=dev)])
    # int32 indices on CPU where they fit: half the index traffic of every filter step
    small = dev.type == "cpu" and order.numel() < 2 ** 31 - 1
    return tuple(t.to(torch.int32) if small else t for t in (offsets.reshape(n, d + 1), order, starts, nbrs))


def _blur_operator(nbrs: torch.Tensor, axes: list[int], dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The [1/2 1 1/2] blur along ``axes`` (one or two, applied in that order) as bags: row a
    of the product holds a's neighbours' neighbours (distinct lattice points), the missing ones
    left out. Returns (index, offsets, weights)."""
    m, dev = nbrs.shape[2] - 1, nbrs.device
    half = torch.tensor([0.5, 1.0, 0.5], dtype=dtype, device=dev)
    idx = torch.arange(m, dtype=nbrs.dtype, device=dev)[:, None]
    w = torch.ones(1, dtype=dtype, device=dev)
    for j in reversed(axes):  # the last axis applied is the outer (row) one
        idx = torch.stack([_take(nbrs[j, 0], idx), idx, _take(nbrs[j, 1], idx)], 2).reshape(m, -1)
        w = (w[:, None] * half).reshape(-1)  # the same for every row
    keep = idx < m
    offsets = torch.cat([torch.zeros(1, dtype=idx.dtype, device=dev), keep.sum(1, dtype=idx.dtype).cumsum(0, dtype=idx.dtype)])
    return _compress(idx, keep), offsets, _compress(w.repeat(m), keep)


def _compress(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x[keep]`` for ``keep`` of ``x``'s shape (numpy's compress of the flat arrays on CPU:
    several times faster than a boolean index)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.compress(keep.numpy().reshape(-1), x.numpy().reshape(-1)))
    return x[keep]


class LatticeSum:
    """``sum_k scale_k * lattices[k].filter(x)`` in one splat, blur and slice over the union of
    the lattices' vertices (one vertex table, block-diagonal operators): one pass over the
    points instead of one per lattice, and the sum formed inside the slice. ``scales`` are
    N x 1 per-point factors (a kernel's normalisation times its weight). Built per dtype;
    no autograd (inference)."""

    def __init__(self, lattices: Sequence[PermutohedralLattice], scales: Sequence[torch.Tensor], dtype: torch.dtype):
        bases = [0]
        for lat in lattices:
            bases.append(bases[-1] + lat.num_vertices)
        self.num_points = lattices[0].num_points
        idx_dtype = lattices[0].offsets.dtype

        def stack(ops: list, sizes: list) -> tuple:
            """Concatenate (index, offsets, weights) bag operators whose bags are consecutive rows."""
            index, offsets, weights, shift = [], [], [], 0
            for (i, o, w), base in zip(ops, sizes):
                index.append(i + base)
                offsets.append(o[:-1] + shift)
                weights.append(w)
                shift += i.numel()
            offsets.append(torch.tensor([shift], dtype=idx_dtype, device=index[0].device))
            return torch.cat(index).to(idx_dtype), torch.cat(offsets).to(idx_dtype), torch.cat(weights)

        self.splat = stack([(lat._splat[0], lat._splat[1], lat._weights_as(dtype)[0]) for lat in lattices],
                           [0] * len(lattices))
        steps = [lat._blur_steps(dtype, False) for lat in lattices]
        self.blur = []
        for s in range(max(len(st) for st in steps)):
            ops = []
            for lat, st in zip(lattices, steps):
                if s < len(st):
                    ops.append(st[s])
                else:  # this lattice is done: its rows pass through
                    m, dev = lat.num_vertices, lat.offsets.device
                    ops.append((torch.arange(m, dtype=idx_dtype, device=dev), torch.arange(m + 1, dtype=idx_dtype, device=dev),
                                torch.ones(m, dtype=dtype, device=dev)))
            self.blur.append(stack(ops, bases[:-1]))
        n = self.num_points
        index = torch.cat([lat.offsets + base for lat, base in zip(lattices, bases)], 1).to(idx_dtype)
        weights = torch.cat([lat._weights_as(dtype)[1].view(n, -1) * sc.to(dtype) for lat, sc in zip(lattices, scales)], 1)
        self.slice = (index.reshape(-1), torch.arange(0, index.numel() + 1, index.shape[1], dtype=idx_dtype,
                                                      device=index.device), weights.reshape(-1))

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the lattices' filterings of ``x`` (N x C)."""
        v = _bags(x.contiguous(), *self.splat)
        for step in self.blur:
            v = _bags(v, *step)
        return _bags(v, *self.slice)


def dense_gaussian_filter(features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Brute force ``sum_j exp(-|f_i - f_j|^2 / 2) x_j`` (N x C), for checking the lattice on small inputs."""
    k = torch.exp(-0.5 * torch.cdist(features, features).pow(2))
    return k @ x


class _LatticeFilter(torch.autograd.Function):
    """``lattice.filter`` with its transpose as the backward pass (the filter is linear in x)."""

    @staticmethod
    def forward(ctx, x, lattice, reverse):
        ctx.lattice, ctx.reverse = lattice, reverse
        return lattice.filter(x, reverse)

    @staticmethod
    def backward(ctx, grad):
        return _LatticeFilter.apply(grad.contiguous(), ctx.lattice, not ctx.reverse), None, None


def lattice_filter(lattice: PermutohedralLattice, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Differentiable ``lattice.filter(x)``: gradients flow to ``x`` (not to the features)."""
    return _LatticeFilter.apply(x, lattice, reverse)
