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
"""
from __future__ import annotations

import math
import warnings

import torch

__all__ = ["PermutohedralLattice", "dense_gaussian_filter", "lattice_filter"]

PACK_LIMIT = 2 ** 62  # keys whose mixed-radix code reaches this are compared coordinate by coordinate


def _scale_factors(d: int) -> torch.Tensor:
    """Diagonal of the elevation matrix E times the filter's inverse std (p. 5-6 of Adams et al.)."""
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))  # a float in the C++
    return torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)], dtype=torch.float32)


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
        dev = f.device
        self.num_points, self.dim = n, d
        self.alpha = 1.0 / (1.0 + 2.0 ** -d)  # the slice constant ("write Andrew" in the C++)

        # Elevate onto the hyperplane x_0 + ... + x_d = 0 (y = E f), accumulated as the C++ does.
        cf = f * _scale_factors(d).to(dev)
        elevated = torch.empty(n, d + 1, dtype=torch.float32, device=dev)
        sm = torch.zeros(n, dtype=torch.float32, device=dev)
        for j in range(d, 0, -1):
            elevated[:, j] = sm - float(j) * cf[:, j - 1]
            sm = sm + cf[:, j - 1]
        elevated[:, 0] = sm

        # Nearest remainder-0 point (coordinates multiples of d+1), round half to even as SSE does.
        down = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
        v = torch.round(elevated * down)
        rem0 = v * float(d + 1)
        total = v.sum(dim=1)  # exact: small integers

        # Rank of each coordinate's residual: its place in a stable descending sort (the C++ counts
        # rank_i = #{j: res_j > res_i} + #{j < i: res_j == res_i}).
        order = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(d + 1, device=dev).expand(n, d + 1))
        # Bring the point back onto the plane when the rounded coordinates do not sum to 0.
        rank += total[:, None].to(torch.long)
        wrap = (rank < 0).to(torch.long) * (d + 1) - (rank > d).to(torch.long) * (d + 1)
        rank += wrap
        rem0 = rem0 + wrap.to(torch.float32)

        # Barycentric coordinates (p. 10 of Adams et al.).
        vb = (elevated - rem0) * down
        bary = torch.zeros(n, d + 2, dtype=torch.float32, device=dev)
        bary.scatter_add_(1, d - rank, vb)
        bary.scatter_add_(1, d - rank + 1, -vb)
        bary[:, 0] = bary[:, 0] + (1.0 + bary[:, d + 1])
        weights = bary[:, : d + 1]

        offsets, nbrs, m = _index(rem0.to(torch.long)[:, :d], rank[:, :d], groups, d)
        self.num_vertices = m
        # Number the vertices in the order the points first touch them (as the C++ hash table
        # does): neighbouring pixels then share nearby vertices, which keeps splat/slice in cache.
        first = torch.full((m,), n * (d + 1), dtype=torch.long, device=dev).scatter_reduce_(
            0, offsets.reshape(-1), torch.arange(n * (d + 1), device=dev), "amin")
        renum = torch.empty(m + 1, dtype=torch.long, device=dev)
        renum[torch.argsort(first)] = torch.arange(m, device=dev)
        renum[m] = m
        offsets = renum[offsets]
        nbrs = torch.empty_like(nbrs).scatter_(2, renum.expand_as(nbrs), renum[nbrs])
        self.offsets, self.weights = offsets, weights.contiguous()
        self._nbrs = nbrs
        self._ops_by_dtype: dict = {}
        self._blur_by_key: dict = {}
        self._operators_as(torch.float32)

    def _operators(self, offsets: torch.Tensor, weights: torch.Tensor, nbrs: torch.Tensor):
        """Sparse CSR operators: slice (N x M, weights times alpha), splat (M x N), blur per axis (M x M)."""
        n, d1 = offsets.shape
        m, dev = self.num_vertices, offsets.device
        cols, perm = torch.sort(offsets, dim=1)
        vals = torch.gather(weights, 1, perm)
        crow = torch.arange(0, n * d1 + 1, d1, device=dev)
        # alpha folds into the slice weights, as the SSE code multiplies them before use
        slice_ = torch.sparse_csr_tensor(crow, cols.reshape(-1), (vals * self.alpha).reshape(-1), (n, m))
        by_vertex = torch.argsort(cols.reshape(-1), stable=True)  # splat rows keep the pixel order
        counts = torch.bincount(cols.reshape(-1), minlength=m)
        splat = torch.sparse_csr_tensor(torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                                        by_vertex // d1, vals.reshape(-1)[by_vertex], (m, n))
        blur, ids = [], torch.arange(m, device=dev)
        half = torch.tensor([0.5, 1.0, 0.5], dtype=weights.dtype, device=dev).expand(m, 3)
        for j in range(d1):
            # [1/2 1 1/2] along axis j; a missing neighbour (id m) contributes nothing.
            c, p = torch.sort(torch.stack([nbrs[j, 0, :m], ids, nbrs[j, 1, :m]], 1), dim=1)
            keep = c < m
            crow_b = torch.cat([ids.new_zeros(1), keep.sum(1).cumsum(0)])
            blur.append(torch.sparse_csr_tensor(crow_b, c[keep], half.gather(1, p)[keep], (m, m)))
        return slice_, splat, blur

    def _operators_as(self, dtype: torch.dtype):
        """The operators in ``dtype`` (built once per dtype, from the float32 geometry)."""
        if dtype not in self._ops_by_dtype:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": the operations used here work
                warnings.simplefilter("ignore", UserWarning)
                self._ops_by_dtype[dtype] = self._operators(self.offsets, self.weights.to(dtype), self._nbrs)
        return self._ops_by_dtype[dtype]

    def _blur_steps(self, dtype: torch.dtype, reverse: bool) -> list:
        """The blur as a list of CSR matrices to apply in turn (built once per dtype and direction).

        On CPU consecutive axes are multiplied out in pairs (a CSR of about 4 entries a row
        instead of two of 3): fewer passes over the vertex values, a third less time. The
        reverse (transposed) blur runs the axes backwards; each axis' matrix is symmetric.
        """
        key = (dtype, reverse)
        if key not in self._blur_by_key:
            axes = self._operators_as(dtype)[2]
            order = list(range(self.dim, -1, -1)) if reverse else list(range(self.dim + 1))
            if axes[0].device.type != "cpu":
                steps = [axes[j] for j in order]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    steps = [(axes[b] @ axes[a]).to_sparse_csr() for a, b in zip(order[::2], order[1::2])]
                if len(order) % 2:
                    steps.append(axes[order[-1]])
            self._blur_by_key[key] = steps
        return self._blur_by_key[key]

    def filter(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """Splat, blur, slice: the lattice Gaussian filter of ``x`` (N x C) -> N x C.

        ``reverse`` runs the blur axes in the opposite order: the transposed filter.
        """
        slice_, splat, _ = self._operators_as(x.dtype)
        values = splat @ x.contiguous()
        for blur in self._blur_steps(x.dtype, reverse):
            values = blur @ values
        return slice_ @ values


def _index(rem0: torch.Tensor, rank: torch.Tensor, groups: torch.Tensor | None, d: int
           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Number the simplex vertices of every point and find each vertex's neighbours along each axis.

    Vertex r of a point's simplex has key rem0 + row r of the canonical simplex (its first d
    coordinates; the last is minus their sum), plus the point's group. Returns offsets
    (N x (d+1) vertex ids), neighbours ((d+1) x 2 x (M+1); a missing neighbour and the padding
    entry are M) and M.
    """
    n, dev = rem0.shape[0], rem0.device
    r = torch.arange(d + 1, device=dev)
    # Key coordinate k of vertex r: rem0_k + r - (d+1) [rank_k > d - r], within rem0_k +- d; the
    # radix leaves d+1 more on each side so that a neighbour's code (+-d) never wraps.
    lo = rem0.amin(0) - (2 * d + 1)
    radix = (rem0.amax(0) + (2 * d + 1) - lo + 1).tolist()
    if groups is not None:
        groups = groups.to(device=dev, dtype=torch.long)
        radix.append(int(groups.max()) + 1)
    k = len(radix)
    if math.prod(radix) < PACK_LIMIT:  # one int64 code per key (mixed radix), searched by value
        strides = [1] * k
        for i in range(k - 2, -1, -1):
            strides[i] = strides[i + 1] * radix[i + 1]
        base = (rem0[:, 0] - lo[0]) * strides[0]
        for i in range(1, d):
            base += (rem0[:, i] - lo[i]) * strides[i]
        if groups is not None:
            base += groups * strides[d]
        codes = base[:, None] + r[None, :] * sum(strides[:d])
        for i in range(d):
            codes -= (d + 1) * strides[i] * (rank[:, i:i + 1] > (d - r)[None, :]).to(torch.long)
        verts, inverse = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)
        m = verts.numel()

        def lookup(delta: list[int]) -> torch.Tensor:
            cand = verts + sum(dl * st for dl, st in zip(delta, strides))
            pos = torch.searchsorted(verts, cand).clamp_(max=m - 1)
            return torch.where(verts[pos] == cand, pos, torch.full_like(pos, m))
    else:  # too wide for one int64: compare keys coordinate by coordinate
        keys = rem0[:, None, :] + r[None, :, None] - (d + 1) * (rank[:, None, :] > (d - r)[None, :, None]).to(torch.long)
        if groups is not None:
            keys = torch.cat([keys, groups.reshape(n, 1, 1).expand(n, d + 1, 1)], 2)
        vkeys, inverse = torch.unique(keys.reshape(-1, k), dim=0, sorted=True, return_inverse=True)
        m = vkeys.shape[0]

        def lookup(delta: list[int]) -> torch.Tensor:
            allk, inv = torch.unique(torch.cat([vkeys, vkeys + torch.tensor(delta, device=dev)]), dim=0,
                                     sorted=True, return_inverse=True)
            lut = torch.full((allk.shape[0],), m, dtype=torch.long, device=dev)
            lut[inv[:m]] = torch.arange(m, device=dev)
            return lut[inv[m:]]
    offsets = inverse.reshape(n, d + 1)

    nbrs = torch.full((d + 1, 2, m + 1), m, dtype=torch.long, device=dev)
    ids = torch.arange(m, device=dev)
    for j in range(d + 1):
        # Along axis j: n1 = every coordinate -1 and coordinate j + d; n2 the opposite, so
        # b = n1(a) exactly when a = n2(b): one search serves both.
        delta = [-1] * d + [0] * (k - d)  # the group does not move
        if j < d:
            delta[j] = d
        n1 = lookup(delta)
        nbrs[j, 0, :m] = n1
        nbrs[j, 1].scatter_(0, n1, ids)  # entries aimed at m land on the padding entry ...
        nbrs[j, 1, m] = m  # ... which stays "missing"
    return offsets, nbrs, m


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
