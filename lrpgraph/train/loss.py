"""The ISNet heatmap loss (Bassi et al., Faster ISNet, IEEE Access 2024) and the cross-entropy + heatmap total.

Shapes: heatmaps N x K x C x h x w (K heatmaps per sample, C channels each; N x C x h x w is K = 1),
masks N x 1 x H x W or N x H x W with 1 = foreground, resized here to h x w.

Readings of the reference, following the Faster ISNet code (ISNetFunctions.LRPLossCEValleysGWRP):
- "per sample and per map" = per (n, k): the normalisation sums run over channels and pixels of one
  map, with the mask broadcast over the C channels, so sum(|H| M) / sum(M) is the mean of |H| over
  the foreground voxels of that map. An all-background mask counts as one foreground pixel there
  (sum(M) clamped to at least 1; exact for every non-empty mask), so the loss stays finite.
- GWRP ranks all h*w pixels of Hn * (1 - M), the zeroed foreground pixels included.
- F = sum(|H| M) is per (n, k), summed over channels and pixels.
- 'hybrid' picks its branch with F compared to C1 + C2 as a constant (no gradient through the test).
"""

from collections import namedtuple

import numpy as np
import torch
from torch import nn

from lrpgraph.errors import LrpgraphError

HeatmapLoss = namedtuple("HeatmapLoss", ["total", "background", "foreground"])
HeatmapLoss.__doc__ = """L_H = mean_n(A L_bg + B L_fg); background and foreground are the batch means of L_bg and L_fg."""

ISNetLossParts = namedtuple(
    "ISNetLossParts", ["total", "cross_entropy", "heatmap", "background", "foreground"]
)
ISNetLossParts.__doc__ = """Total (1 - P) CE + P L_H, and its parts (batch means)."""

PSI_FORMS = ("L2", "hybrid")


def _check_binary(mask, where):
    """Raise when the mask holds a value other than 0 and 1."""
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        value = mask[bad].flatten()[0].item()
        raise LrpgraphError(
            f"{where}: the mask is not binary (found the value {value!r}, {int(bad.sum())} such "
            "elements); give masks with 0 for background and 1 for foreground only"
        )


def resize_mask(mask: torch.Tensor, size: tuple) -> torch.Tensor:
    """Resize binary masks N x 1 x H x W (or N x H x W) to N x 1 x h x w.

    Average pooling (adaptive_avg_pool2d: plain kernel = stride pooling for an integer factor,
    adaptive windows otherwise), then re-binarised: a pixel with any foreground becomes 1.
    """
    if not torch.is_tensor(mask):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise LrpgraphError(
            f"resize_mask: masks have shape {tuple(mask.shape)}; give N x 1 x H x W or N x H x W"
        )
    if not mask.dtype.is_floating_point:
        mask = mask.to(torch.float32)
    _check_binary(mask, "resize_mask")
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise LrpgraphError(f"resize_mask: target size {size!r} is empty; give a positive h x w")
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    pooled = nn.functional.adaptive_avg_pool2d(mask, (h, w))
    return (pooled > 0).to(mask.dtype)


def gwrp(x: torch.Tensor, d: float) -> torch.Tensor:
    """Global weighted ranked pooling over the last two (spatial) dims: ... x h x w -> ...

    Values sorted descending v_(0) >= v_(1) >= ..., GWRP = sum_i d^i v_(i) / sum_i d^i.
    d = 0 is max pooling, d = 1 the mean. Differentiable (through the sort).
    """
    d = float(d)
    if not 0.0 <= d <= 1.0:
        raise LrpgraphError(f"gwrp: decay d = {d} is outside [0, 1]; give 0 (max) ... 1 (mean)")
    if x.dim() < 2:
        raise LrpgraphError(f"gwrp: input has shape {tuple(x.shape)}; give ... x h x w")
    flat = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
    ranked, _ = torch.sort(flat, dim=-1, descending=True)
    weights = torch.pow(
        torch.tensor(d, dtype=torch.float64), torch.arange(flat.shape[-1], dtype=torch.float64)
    )  # 0 ** 0 = 1, so d = 0 keeps the first (largest) value only
    weights = (weights / weights.sum()).to(device=ranked.device, dtype=ranked.dtype)
    return (ranked * weights).sum(-1)


def _as_five_dims(heatmaps):
    if heatmaps.dim() == 4:
        return heatmaps.unsqueeze(1)
    if heatmaps.dim() != 5:
        raise LrpgraphError(
            f"heatmap_loss: heatmaps have shape {tuple(heatmaps.shape)}; "
            "give N x K x C x h x w (or N x C x h x w for one map per sample)"
        )
    return heatmaps


def _check_options(E, d, C1, C2, psi):
    if psi not in PSI_FORMS:
        raise LrpgraphError(f"heatmap_loss: psi = {psi!r} is unknown; use one of {PSI_FORMS}")
    if not C1 > 0 or not C2 >= 0:
        raise LrpgraphError(f"heatmap_loss: C1 = {C1}, C2 = {C2}; give C1 > 0 and C2 >= 0")
    if not E > 0:
        raise LrpgraphError(f"heatmap_loss: E = {E}; give E > 0")
    if not 0.0 <= float(d) <= 1.0:
        raise LrpgraphError(f"heatmap_loss: d = {d} is outside [0, 1]")


def foreground_term(F: torch.Tensor, C1: float = 1.0, C2: float = 25.0, psi: str = "hybrid") -> torch.Tensor:
    """Step 4 per (n, k): (min(F/C1, 1) - 1)^2 + psi(F); the caller takes the mean over K."""
    low = (torch.clamp(F / C1, max=1.0) - 1.0) ** 2
    ratio = C2 / C1
    l2 = (torch.clamp(F / C1, min=ratio) - ratio) ** 2
    if psi == "L2":
        return low + l2
    edge = C1 + C2
    l1 = torch.abs(F - edge) + 1.0
    return low + torch.where(F.detach() <= edge, l2, l1)


def heatmap_loss(heatmaps: torch.Tensor, masks: torch.Tensor, A: float = 1.0, B: float = 1.0, E: float = 1.0,
                 d: float = 0.9, C1: float = 1.0, C2: float = 25.0, psi: str = "hybrid") -> HeatmapLoss:
    """The ISNet heatmap loss L_H (Faster ISNet's steps 1-5, below); returns a HeatmapLoss.

    heatmaps: N x K x C x h x w (or N x C x h x w, K = 1); masks: N x 1 x H x W or N x H x W,
    binary, 1 = foreground, resized to h x w by resize_mask. Computed in float32 at least.
    """
    _check_options(E, d, C1, C2, psi)
    H = _as_five_dims(heatmaps)
    if H.dtype in (torch.float16, torch.bfloat16) or not H.dtype.is_floating_point:
        H = H.to(torch.float32)
    if not torch.is_tensor(masks):
        masks = torch.as_tensor(np.asarray(masks))
    if masks.shape[0] != H.shape[0]:
        raise LrpgraphError(
            f"heatmap_loss: {masks.shape[0]} masks for {H.shape[0]} heatmaps; give one mask per sample"
        )
    M = resize_mask(masks, H.shape[-2:]).to(device=H.device, dtype=H.dtype)
    M = M.unsqueeze(1)  # N x 1 x 1 x h x w, broadcast over K and C
    absH = torch.abs(H)
    # 1. normalise per sample and map by the foreground mean of |H|
    fg_sum = (absH * M).sum(dim=(-3, -2, -1), keepdim=True)
    fg_count = (M.expand_as(H)).sum(dim=(-3, -2, -1), keepdim=True).clamp(min=1.0)
    Hn = absH / (fg_sum / fg_count + 1e-10)
    # 2-3. background: GWRP per channel, activation, cross-entropy towards 0
    g = gwrp(Hn * (1.0 - M), d)  # N x K x C
    L_bg = -torch.log(1.0 - torch.clamp(g / (g + E), max=1.0 - 1e-7))
    L_bg = L_bg.mean(dim=(1, 2))
    # 4. foreground: the unnormalised total foreground relevance per map
    F = fg_sum.reshape(H.shape[0], H.shape[1])
    L_fg = foreground_term(F, C1, C2, psi).mean(dim=1)
    # 5. batch mean
    total = (A * L_bg + B * L_fg).mean()
    return HeatmapLoss(total, L_bg.mean(), L_fg.mean())


class ISNetLoss(nn.Module):
    """(1 - P) CrossEntropy(logits, labels) + P L_H, with the heatmap loss options held here."""

    def __init__(self, P: float = 0.7, A: float = 1.0, B: float = 1.0, E: float = 1.0, d: float = 0.9, C1: float = 1.0,
                 C2: float = 25.0, psi: str = "hybrid"):
        super().__init__()
        if not 0.0 <= P <= 1.0:
            raise LrpgraphError(f"ISNetLoss: P = {P} is outside [0, 1]; it weighs CE against L_H")
        _check_options(E, d, C1, C2, psi)
        self.P, self.A, self.B, self.E, self.d = P, A, B, E, d
        self.C1, self.C2, self.psi = C1, C2, psi

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, heatmaps: torch.Tensor,
                masks: torch.Tensor) -> ISNetLossParts:
        """Return ISNetLossParts(total, cross_entropy, heatmap, background, foreground)."""
        ce = nn.functional.cross_entropy(logits, labels)
        parts = heatmap_loss(
            heatmaps, masks, self.A, self.B, self.E, self.d, self.C1, self.C2, self.psi
        )
        total = (1.0 - self.P) * ce + self.P * parts.total
        return ISNetLossParts(total, ce, parts.total, parts.background, parts.foreground)

    def extra_repr(self) -> str:
        return (
            f"P={self.P}, A={self.A}, B={self.B}, E={self.E}, d={self.d}, "
            f"C1={self.C1}, C2={self.C2}, psi={self.psi!r}"
        )


def total_relevance(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per sample and map sum |H| over channels and pixels: N x K (N x 1 for N x C x h x w)."""
    H = _as_five_dims(heatmaps)
    return torch.abs(H).sum(dim=(-3, -2, -1))


class C1C2Tuner:
    """Running mean and (population) standard deviation of per-sample sum|H| values.

    Feed it total_relevance(heatmaps) over the last epoch of training without the heatmap loss;
    result() gives C1 = max(mu/5, mu - 3 sigma), C2 = min(25 C1, mu + 3 sigma). Batches are merged
    with Welford's update (Chan et al.'s pairwise form), in float64.
    """

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, values: object) -> None:
        """Add values (a tensor, array or sequence of any shape; every element is one value)."""
        if torch.is_tensor(values):
            values = values.detach().cpu().to(torch.float64).numpy()
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        if not np.all(np.isfinite(v)):
            raise LrpgraphError(
                "C1C2Tuner.update: got a NaN or infinite heatmap sum; check the heatmaps of this batch"
            )
        n_b, mean_b = v.size, float(v.mean())
        m2_b = float(((v - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else float("nan")

    def result(self) -> tuple:
        """Return (C1, C2) from the values seen so far."""
        if self.count == 0:
            raise LrpgraphError(
                "C1C2Tuner.result: no values were given; call update() with heatmap sums first"
            )
        mu, sigma = self.mean, self.std
        c1 = max(mu / 5.0, mu - 3.0 * sigma)
        c2 = min(25.0 * c1, mu + 3.0 * sigma)
        return c1, c2
