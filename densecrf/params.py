"""The CRF's parameters, named as in the paper (Section 4.2) and the release's ``densecrf`` flags."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


class CrfError(ValueError):
    """Bad input to the CRF library (parameters, image or scores), with a message for the user."""


# Message normalisation of the Gaussian kernels (pydensecrf's names). The release's densecrf
# code divides each pixel's message by sum_j k(f_i, f_j) afterwards: "after".
NORMALIZATIONS = ("after", "symmetric")


@dataclass(frozen=True)
class CRFParams:
    """Fully connected CRF settings; defaults are the release's DeepLab-LargeFOV ones.

    Paper -> field: w1 -> ``bi_w``, sigma_alpha -> ``bi_xy_std``, sigma_beta -> ``bi_rgb_std``,
    w2 -> ``pos_w``, sigma_gamma -> ``pos_xy_std``; ``iters`` mean-field iterations;
    ``normalization`` "after" (the original's) or "symmetric" (pydensecrf's default).
    """

    iters: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 49.0
    bi_rgb_std: float = 5.0
    pos_w: float = 3.0
    pos_xy_std: float = 3.0
    normalization: str = "after"

    def __post_init__(self):
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 0:
            raise CrfError(f"iters must be a non-negative integer, got {self.iters!r}")
        for name in ("bi_w", "pos_w"):
            if not 0 <= float(getattr(self, name)) < math.inf:
                raise CrfError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        for name in ("bi_xy_std", "bi_rgb_std", "pos_xy_std"):
            if not 0 < float(getattr(self, name)) < math.inf:
                raise CrfError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.normalization not in NORMALIZATIONS:
            raise CrfError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")

    @classmethod
    def from_paper(cls, w1: float, sigma_alpha: float, sigma_beta: float, w2: float = 3.0,
                   sigma_gamma: float = 3.0, iters: int = 10, normalization: str = "after") -> "CRFParams":
        """Build from the paper's symbols (w1, sigma_alpha, sigma_beta, w2, sigma_gamma)."""
        return cls(iters=iters, bi_w=w1, bi_xy_std=sigma_alpha, bi_rgb_std=sigma_beta,
                   pos_w=w2, pos_xy_std=sigma_gamma, normalization=normalization)

    def to_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CRFParams":
        """Inverse of ``to_dict``; unknown keys (e.g. a stored ``mean_iou``) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        if "iters" in kw:
            kw["iters"] = int(kw["iters"])
        return cls(**kw)

    def replace(self, **changes) -> "CRFParams":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
