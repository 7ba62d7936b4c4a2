"""Batched Farnebäck dense optical flow in torch, matching OpenCV's ``calcOpticalFlowFarneback``.

Farnebäck, "Two-Frame Motion Estimation Based on Polynomial Expansion" (SCIA 2003): each frame is
approximated around every pixel by a quadratic f(x) = xᵀAx + bᵀx + c, fitted by weighted least
squares with a Gaussian applicability (separable filters, Sec. 2). Where the next frame is the
previous one displaced by d, A d = -½ Δb; the per-pixel normal equations (AᵀA d = AᵀΔb) are averaged
over a window around each pixel and solved (Sec. 4), iterated with the next frame's expansion
sampled at x + d (Sec. 5), and run coarse to fine on a pyramid (Sec. 6).

OpenCV's behaviour is reproduced (established by experiment against cv2): the pyramid smooths the
full-resolution frame with a Gaussian of sigma (1/scale - 1)/2 and resizes it bilinearly, with
OpenCV's level count and size rounding; replicated borders in the expansion and the window blur;
a border weight that fades the equations over the outer 5 pixels; samples of the next frame whose
bilinear footprint leaves the image fall back to the previous frame's A and no Δb (with a flow of
exactly 0 on still content, which decides that rule on the top and left edges); the box (or
Gaussian) window blur; and the flow, zero at the coarsest level, upsampled and scaled by
1/pyr_scale between levels. Everything is batched over N pairs, fp32, on the frames' device.

Also here: ``consecutive_flows`` (the flows of clips' consecutive frames, which the flow labeller's
``batch`` turns into labels) and ``configure_opencv_threads`` (the fork-deadlock guard).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from timematters.config import FarnebackParams

_RELEASED_PARAMS = FarnebackParams()
_MIN_LEVEL_SIZE = 32  # OpenCV stops the pyramid before a side would drop below 32 pixels
# Weight of the equations in the 5 outermost rows/columns (OpenCV's values): the expansion there
# sees replicated pixels, so it is trusted less.
_BORDER_FADE = (0.14, 0.14, 0.4472, 0.4472, 0.4472)
# OpenCV's fixed kernels for small Gaussian blurs with sigma <= 0 (getGaussianKernel).
_SMALL_GAUSSIANS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


@torch.no_grad()
def farneback_torch(
    prev: torch.Tensor, nxt: torch.Tensor, params: FarnebackParams = _RELEASED_PARAMS
) -> torch.Tensor:
    """Dense flow from ``prev`` to ``nxt``: frames [N, H, W] float -> flow [N, H, W, 2] (dx, dy).

    Same parameters and result as ``cv2.calcOpticalFlowFarneback`` without an initial flow, for N
    pairs at once on the frames' device, in fp32.
    """
    if prev.shape != nxt.shape or prev.dim() != 3:
        raise ValueError(f"expected two [N, H, W] frame stacks, got {prev.shape} and {nxt.shape}")
    N = len(prev)
    pairs = torch.arange(N, device=prev.device)
    return _flow_of_pairs(torch.cat([prev, nxt]).float(), pairs, pairs + N, params)


def _flow_of_pairs(
    frames: torch.Tensor, prev: torch.Tensor, nxt: torch.Tensor, params: FarnebackParams
) -> torch.Tensor:
    """Flow between frames[prev[i]] and frames[nxt[i]]: frames [F, H, W] -> [P, H, W, 2].

    All pairs at once, on any device. (A CPU scheduling layer — pairs split into tasks over a
    thread pool, iterations chunked to stay in cache — bought 1.05-1.15x over this on a quiet
    machine and lost to OpenCV under load; OpenCV's Farnebäck is the CPU default, so it went.)
    """
    return rearrange(_farneback(frames, prev, nxt, params), "n c h w -> n h w c")


def _farneback(
    frames: torch.Tensor, prev: torch.Tensor, nxt: torch.Tensor, params: FarnebackParams
) -> torch.Tensor:
    """Coarse to fine over OpenCV's pyramid: frames [F, H, W], pair indices -> [P, 2, H, W]."""
    _, H, W = frames.shape
    filters, inverse_gram = _expansion_filters(params.poly_n, params.poly_sigma)
    # OpenCV divides the box sums by winsize² and adds 1e-3 to the determinant; the same solution
    # without the division has 1e-3·winsize⁴ added (the determinant is quadratic in the sums).
    regulariser = 1e-3 if params.gaussian_window else 1e-3 * params.winsize**4
    flow = None
    for sigma, ksize, (h, w) in _pyramid(H, W, params):
        level = _smooth_and_resize(frames, sigma, ksize, (h, w))
        # Each frame's expansion once, written straight into its zero-padded copy for grid_sample.
        expansion = level.new_empty(len(level), 5, *_padded_size(h, w))
        expansion[:, :, h:].zero_()
        expansion[:, :, :h, w:].zero_()
        _expand_polynomials(level, filters, inverse_gram, out=expansion[:, :, :h, :w])
        if flow is None:
            flow = frames.new_zeros(len(prev), 2, h, w)
        else:
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow.div_(params.pyr_scale)
        equations = _Equations(expansion[prev], expansion[nxt], (h, w))
        window = _Window(equations.terms_prev, params)
        for _ in range(params.iterations):
            equations.at(flow, out=window.equations)
            _solve_flow(window.blur(), regulariser, out=flow)  # updated in place
    return flow


@torch.no_grad()
def consecutive_flows(
    grey: torch.Tensor, params: FarnebackParams = _RELEASED_PARAMS
) -> torch.Tensor:
    """Flow between each pair of consecutive frames of grey clips [B, T, H, W] -> [B, T-1, H, W, 2].

    Pairs of a clip share frames: each frame's pyramid and expansion is computed once.
    """
    B, T = grey.shape[:2]
    frame_index = torch.arange(B * T, device=grey.device).view(B, T)
    prev = frame_index[:, :-1].reshape(-1)
    flow = _flow_of_pairs(rearrange(grey, "b t h w -> (b t) h w").float(), prev, prev + 1, params)
    return rearrange(flow, "(b t) h w c -> b t h w c", b=B)


_IMPORT_PID = os.getpid()
_configured = False  # inherited by forked children: whether an ancestor set OpenCV's threads


def configure_opencv_threads(n: int) -> None:
    """Set OpenCV's thread count, once, in the parent process before DataLoader workers start.

    The trap: once a process has used OpenCV's thread pool without ever setting its size,
    ``cv2.setNumThreads`` called in a *forked* child (a DataLoader worker under the default fork
    start method, e.g. from a ``worker_init_fn``) waits forever on the pool inherited from the
    parent. After the parent has set it, workers inherit the setting and may even set it again.
    Hence: call this in the parent (or use the spawn start method). Called in a forked child
    whose parent did not, it raises instead of risking the hang.
    """
    global _configured
    if os.getpid() != _IMPORT_PID and not _configured:
        raise RuntimeError(
            "configure_opencv_threads called in a forked child whose parent never set OpenCV's "
            "threads: cv2.setNumThreads can deadlock here; call it once in the parent process"
        )
    import cv2

    cv2.setNumThreads(n)
    _configured = True


def _pyramid(H: int, W: int, params: FarnebackParams):
    """OpenCV's levels, coarse to fine: (blur sigma, blur size, (height, width)) of each."""
    levels, scale = 0, 1.0
    while levels < params.levels:
        scale *= params.pyr_scale
        if W * scale < _MIN_LEVEL_SIZE or H * scale < _MIN_LEVEL_SIZE:
            break
        levels += 1
    for k in range(levels, -1, -1):
        scale = 1.0
        for _ in range(k):  # a running product, as OpenCV computes it
            scale *= params.pyr_scale
        sigma = (1.0 / scale - 1.0) * 0.5
        ksize = max(round(sigma * 5) | 1, 3)  # round() is half-to-even, like cvRound
        yield sigma, ksize, (round(H * scale), round(W * scale))


def _gaussian_kernel(ksize: int, sigma: float) -> list[float]:
    """OpenCV's 1-D Gaussian (getGaussianKernel): fixed small kernels when sigma <= 0."""
    if sigma <= 0 and ksize in _SMALL_GAUSSIANS:
        return list(_SMALL_GAUSSIANS[ksize])
    if sigma <= 0:
        sigma = ((ksize - 1) * 0.5 - 1) * 0.3 + 0.8
    x = np.arange(ksize) - (ksize - 1) * 0.5
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).astype(np.float32).tolist()


# The filters below are sums of shifted slices accumulated in place: these thin filters are
# memory-bound, and both depthwise convolutions and fresh temporaries are several times slower on
# the CPU.


def _symmetric_filter(x: torch.Tensor, kernel: list[float], dim: int) -> torch.Tensor:
    """Valid-size filter along ``dim`` with a symmetric kernel (pairs x[+k] + x[-k] first)."""
    r = len(kernel) // 2
    L = x.shape[dim] - 2 * r
    out = x.narrow(dim, r, L) * kernel[r]
    pair_sum = torch.empty_like(out)
    for k in range(1, r + 1):
        torch.add(x.narrow(dim, r + k, L), x.narrow(dim, r - k, L), out=pair_sum)
        out.add_(pair_sum, alpha=kernel[r + k])
    return out


def _window_sum(
    x: torch.Tensor,
    size: int,
    dim: int,
    out: torch.Tensor,
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Sums of ``size`` consecutive entries along ``dim`` into ``out``, in about log2(size) passes.

    Sums of 1, 2, 4, 8... neighbours are built by doubling (in two flat ``scratch`` buffers at
    least x's size, taken in turn); those in size's binary expansion are added up.
    A size one below a power of two (the released 15) instead takes the sums of size + 1 less
    their last entry, one pass rather than several additions; a run of exact zeros (h on still
    content) still sums to exactly 0. x needs out's length + size - 1 entries along ``dim``, one
    more for such a size.
    """
    L = out.shape[dim]
    doublings = 0

    def doubled(partial: torch.Tensor, width: int) -> torch.Tensor:
        nonlocal doublings
        n = partial.shape[dim] - width
        first, second = partial.narrow(dim, 0, n), partial.narrow(dim, width, n)
        doublings += 1
        buffer = scratch[doublings % 2][: first.numel()].view(first.shape)
        return torch.add(first, second, out=buffer)

    partial, width = x, 1
    if size > 1 and (size + 1) & size == 0:
        while 2 * width < size:
            partial, width = doubled(partial, width), 2 * width
        torch.add(partial.narrow(dim, 0, L), partial.narrow(dim, width, L), out=out)
        return out.sub_(x.narrow(dim, size, L))
    offset, started = 0, False
    while size:
        if size & 1:
            piece = partial.narrow(dim, offset, L)
            out.add_(piece) if started else out.copy_(piece)
            offset, started = offset + width, True
        size >>= 1
        if size:
            partial, width = doubled(partial, width), 2 * width
    return out


def _smooth_and_resize(
    frames: torch.Tensor, sigma: float, ksize: int, size: tuple[int, int]
) -> torch.Tensor:
    """A pyramid level: Gaussian blur (reflect-101 border) of the full frames, bilinear resize."""
    kernel = _gaussian_kernel(ksize, sigma)
    r = ksize // 2
    x = F.pad(frames[:, None], (r, r, r, r), mode="reflect")[:, 0]
    x = _symmetric_filter(_symmetric_filter(x, kernel, 1), kernel, 2)
    if x.shape[-2:] != size:
        x = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return x


def _expansion_filters(n: int, sigma: float) -> tuple[list[list[float]], list[float]]:
    """The applicability's 1-D filters g, x·g, x²·g (2n+1 taps) and the entries of G⁻¹ needed.

    G is the Gram matrix of the basis (1, x, y, x², y², xy) under the 2-D applicability
    g(x) g(y); the coefficients are G⁻¹ times the filter responses, and with Σg = 1 G⁻¹ has
    only the entries (1,1), (0,3), (3,3), (5,5) that matter.
    """
    if sigma < np.finfo(np.float32).eps:
        sigma = n * 0.3
    x = np.arange(-n, n + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * sigma * sigma)).astype(np.float32)
    g = (g / g.astype(np.float64).sum()).astype(np.float32)
    xg, xxg = (x * g).astype(np.float32), (x * x * g).astype(np.float32)
    X, Y = np.meshgrid(x, x)
    basis = np.stack([np.ones_like(X), X, Y, X * X, Y * Y, X * Y])  # [6, y, x]
    gram = np.einsum("ayx,byx,yx->ab", basis, basis, np.outer(g, g).astype(np.float64))
    inv = np.linalg.inv(gram)
    entries = [float(inv[1, 1]), float(inv[0, 3]), float(inv[3, 3]), float(inv[5, 5])]
    return [g.tolist(), xg.tolist(), xxg.tolist()], entries


def _expand_polynomials(
    frames: torch.Tensor,
    filters: list[list[float]],
    inverse_gram: list[float],
    out: torch.Tensor,
) -> torch.Tensor:
    """Quadratic fit per pixel: frames [N, H, W] -> out [N, 5, H, W] (b_x, b_y, a_xx, a_yy, a_xy).

    b: linear coefficients; a_xx, a_yy: those of x², y²; a_xy: that of xy (= 2 A_xy).
    Replicated border. Separable: each coefficient is a filter response, a horizontal filter
    among g, x·g, x²·g followed by a vertical one, times an entry of G⁻¹. The entries are folded
    into the filters (a_xx = ig03·Σg·f + ig33·Σx²·g·f is the horizontal filter
    c = ig03·g + ig33·x²·g followed by g), so three horizontal passes (g, x·g, c) and five
    vertical ones give the coefficients directly.
    """
    g, xg, xxg = filters
    ig11, ig03, ig33, ig55 = inverse_gram
    c = [ig03 * even + ig33 * square for even, square in zip(g, xxg, strict=True)]
    n = len(g) // 2
    N, H, W = frames.shape
    x = F.pad(frames[:, None], (n, n, n, n), mode="replicate")[:, 0]  # [N, H+2n, W+2n]
    # Horizontal: (Σg·f, Σx·g·f, Σc·f) along each row; x·g is odd and 0 in the middle.
    horizontal = x.new_empty(N, 3, H + 2 * n, W)
    h_g, h_xg, h_c = horizontal.unbind(1)
    torch.mul(x.narrow(2, n, W), g[n], out=h_g)
    torch.mul(x.narrow(2, n, W), c[n], out=h_c)
    scratch = torch.empty_like(h_g)
    for k in range(1, n + 1):
        right, left = x.narrow(2, n + k, W), x.narrow(2, n - k, W)
        torch.add(right, left, out=scratch)
        h_g.add_(scratch, alpha=g[n + k])
        h_c.add_(scratch, alpha=c[n + k])
        torch.sub(right, left, out=scratch)
        _accumulate(h_xg, scratch, xg[n + k], first=k == 1)
    # Vertical: c on Σg·f gives a_yy, g on Σx·g·f b_x, g on Σc·f a_xx (symmetric filters: sums
    # of the rows k above and below); x·g on Σg·f gives b_y, on Σx·g·f a_xy (differences).
    b_x, b_y, a_xx, a_yy, a_xy = out.unbind(1)
    even_outputs = ((a_yy, c, 1.0), (b_x, g, ig11), (a_xx, g, 1.0))
    middle = horizontal.narrow(2, n, H).unbind(1)
    for (output, taps, factor), rows in zip(even_outputs, middle, strict=True):
        torch.mul(rows, factor * taps[n], out=output)
    pair_sum = x.new_empty(N, 3, H, W)
    pair_diff = x.new_empty(N, 2, H, W)
    for k in range(1, n + 1):
        below, above = horizontal.narrow(2, n + k, H), horizontal.narrow(2, n - k, H)
        torch.add(below, above, out=pair_sum)
        for (output, taps, factor), pair in zip(even_outputs, pair_sum.unbind(1), strict=True):
            output.add_(pair, alpha=factor * taps[n + k])
        torch.sub(below[:, :2], above[:, :2], out=pair_diff)
        _accumulate(b_y, pair_diff[:, 0], ig11 * xg[n + k], first=k == 1)
        _accumulate(a_xy, pair_diff[:, 1], ig55 * xg[n + k], first=k == 1)
    return out


def _accumulate(out: torch.Tensor, x: torch.Tensor, weight: float, first: bool) -> None:
    """out += weight·x in place, or out = weight·x for the first term (no zeroing pass)."""
    if first:
        torch.mul(x, weight, out=out)
    else:
        out.add_(x, alpha=weight)


class _Equations:
    """Per-pixel normal equations of one pyramid level, for any flow (Farnebäck Sec. 4-5).

    With A the mean of the two frames' A (the next frame's expansion sampled bilinearly at
    x + d) and Δb = ½(b_prev - b_next) + A d, ``at(d)`` gives [N, 5, H, W] with channels
    (G_xx, G_yy, G_xy, h_x, h_y) of G = AᵀA, h = AᵀΔb. Where the 2x2 sampling footprint
    leaves the image the next frame is not used: b_next = 0 and A = A_prev. The equations are
    weighted by OpenCV's border fade, which trusts the outer 5 pixels less (their expansion sees
    replicated pixels).

    Still content must give Δb = 0 exactly, as in OpenCV: on the top row and left column the sign
    of a flow that should be 0 decides whether the off-image rule applies (x + d < 0), and that
    changes the flow around it by up to half a pixel. Hence the halves below are exact powers of
    two: a fused multiply-add (as addcmul is) rounds ½b_prev + (-½)b_next once, which is exactly 0
    where b_prev = b_next; with an inexact factor (such as 1/winsize) it leaves the rounding error
    of ½b_prev instead, and so a flow of about ±1e-9 of either sign.
    """

    def __init__(
        self,
        expansion_prev: torch.Tensor,
        expansion_next: torch.Tensor,
        size: tuple[int, int],
    ):
        """``expansion_prev``, ``expansion_next``: [N, 5, H', W'], the expansions (H, W = ``size``)
        zero-padded to powers of two (``_padded_size``)."""
        H, W = size
        device = expansion_prev.device
        self.expansion_next = expansion_next
        self.size = torch.tensor(expansion_next.shape[:1:-1], device=device, dtype=torch.float32)
        # Terms (½b_x, ½b_y, A_xx, A_yy, A_xy): each frame's (b, a_xx, a_yy, a_xy = 2 A_xy)
        # halved to average the two frames, the next frame's b negated.
        halves = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.25], device=device)[:, None, None]
        self.weight_next = (
            halves * torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0], device=device)[:, None, None]
        )
        self.terms_prev = expansion_prev[..., :H, :W] * halves
        # G and h are quadratic in the terms: the fade enters squared, on the border strips only.
        self.fade_rows = _border_strips(_border_fade(H, device) ** 2)
        self.fade_cols = _border_strips(_border_fade(W, device) ** 2)
        # Pixel positions x and their grid_sample coordinates (2x + 1) / size - 1, exact. A flow d
        # moves the coordinates by d·(2/size), exact (a power of two), so still content keeps them.
        xs = torch.arange(W, device=device, dtype=torch.float32)
        ys = torch.arange(H, device=device, dtype=torch.float32)
        self.base_xy = torch.stack(torch.broadcast_tensors(xs, ys[:, None]))  # [2, H, W]
        self.grid_scale = (2.0 / self.size)[:, None, None]
        self.base_grid = self.base_xy * self.grid_scale + (1.0 / self.size - 1.0)[:, None, None]
        self.limits = torch.tensor([W - 1.0, H - 1.0], device=device)[:, None, None]
        # Buffers reused by every iteration: fresh large tensors cost page faults on the CPU.
        N = len(expansion_prev)
        self.position = expansion_prev.new_empty(N, 2, H, W)
        self.grid = expansion_prev.new_empty(N, 2, H, W)
        self.off_image = torch.empty(2, N, 2, H, W, dtype=torch.bool, device=device)
        self.outside = torch.empty(N, 1, H, W, dtype=torch.bool, device=device)

    def at(self, flow: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The equations [N, 5, H, W] for flow [N, 2, H, W], written into ``out``.

        Everything channels first: ops over a trailing dimension of 2 are several times slower
        on the CPU, and grid_sample takes the grid as a permuted view at no extra cost.
        """
        # The off-image test on the rounded x + d, as OpenCV's: the 2x2 footprint must fit.
        position = torch.add(self.base_xy, flow, out=self.position)
        below, beyond = self.off_image.unbind(0)
        torch.lt(position, 0, out=below).logical_or_(torch.ge(position, self.limits, out=beyond))
        outside = torch.logical_or(below[:, :1], below[:, 1:], out=self.outside)  # [N, 1, H, W]
        grid = torch.addcmul(self.base_grid, flow, self.grid_scale, out=self.grid)
        grid[:, :1].masked_fill_(outside, -4.0)  # x far enough out that grid_sample gives 0
        sampled = F.grid_sample(
            self.expansion_next,
            rearrange(grid, "n c h w -> n h w c"),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        terms = torch.addcmul(self.terms_prev, sampled, self.weight_next, out=sampled)
        # Off-image the next frame's share of A is the previous frame's: ½A_prev twice, exact.
        terms[:, 2:].addcmul_(outside, self.terms_prev[:, 2:])
        # Pairs of channels at once where they line up: (Δb_x, Δb_y), (a_xx, a_yy), (d_x, d_y).
        half_db, a_diagonal, a_xy = terms[:, :2], terms[:, 2:4], terms[:, 4:]
        db = half_db.addcmul_(a_diagonal, flow)  # Δb = ½(b_prev - b_next) + A d
        db[:, :1].addcmul_(a_xy, flow[:, 1:])
        db[:, 1:].addcmul_(a_xy, flow[:, :1])
        g_diagonal, g_xy, h = out[:, :2], out[:, 2:3], out[:, 3:]
        torch.mul(a_diagonal, a_diagonal, out=g_diagonal).addcmul_(a_xy, a_xy)
        torch.add(a_diagonal[:, :1], a_diagonal[:, 1:], out=g_xy).mul_(a_xy)
        torch.mul(a_diagonal, db, out=h)  # (a_xx Δb_x, a_yy Δb_y)
        h[:, :1].addcmul_(a_xy, db[:, 1:])
        h[:, 1:].addcmul_(a_xy, db[:, :1])
        for rows, fade in self.fade_rows:
            out[:, :, rows].mul_(fade[:, None])
        for cols, fade in self.fade_cols:
            out[:, :, :, cols].mul_(fade)
        return out


def _padded_size(H: int, W: int) -> tuple[int, int]:
    """The expansions' size for grid_sample: zero-padded to powers of two, so that its normalised
    coordinates, (2x + 1) / size - 1, are exact at whole pixels: still content samples itself
    exactly and keeps a flow of exactly 0, as in OpenCV (whose treatment of the image's edge
    hinges on the sign of the flow there). Samples whose footprint leaves the image are not used.
    """
    return 1 << (H - 1).bit_length(), 1 << (W - 1).bit_length()


def _border_fade(L: int, device: torch.device) -> torch.Tensor:
    """OpenCV's weight of the equations along one axis [L]: below 1 within 5 pixels of an end."""
    near = torch.tensor(_BORDER_FADE)
    idx = torch.arange(L)
    end = L - 1 - idx
    from_start = torch.where(idx < len(near), near[idx.clamp(max=len(near) - 1)], 1.0)
    from_end = torch.where(end < len(near), near[end.clamp(max=len(near) - 1)], 1.0)
    return (from_start * from_end).to(device)


def _border_strips(weights: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
    """The parts of a weight vector that differ from 1: its two ends (all of it when short)."""
    k = len(_BORDER_FADE)
    if len(weights) <= 2 * k:
        return [(slice(None), weights)]
    return [(slice(0, k), weights[:k]), (slice(-k, None), weights[-k:])]


class _Window:
    """Sum (box) or average (Gaussian) of the equations over the window around each pixel.

    The equations of N pairs at one level [N, 5, H, W] go into ``equations``, a view into the
    middle rows of the vertical pass's input: the replicated border rows are filled in place
    around them, and so are the columns around the vertical sums, rather than padded copies made.
    The buffers are reused by every iteration. For the box OpenCV sums 2·(winsize//2) + 1 rows
    and columns; its 1/winsize² normalisation is left to the solve (``regulariser`` in
    ``_farneback``).
    """

    def __init__(self, like: torch.Tensor, params: FarnebackParams):
        N, _, H, W = like.shape
        self.m, self.gaussian = params.winsize // 2, params.gaussian_window
        span = 2 * self.m + 1  # and one more row and column for _window_sum when 2^k - 1
        self.rows = like.new_empty(N, 5, H + span, W)
        self.cols = like.new_empty(N, 5, H, W + span)
        self.out = like.new_empty(N, 5, H, W)
        largest = max(self.rows.numel(), self.cols.numel())
        self.scratch = (like.new_empty(largest), like.new_empty(largest))
        self.equations = self.rows.narrow(2, self.m, H)
        if self.gaussian:
            m, sigma = self.m, self.m * 0.3
            taps = np.exp(-(np.arange(-m, m + 1) ** 2) / (2 * sigma * sigma)).astype(np.float32)
            self.kernel = (taps / taps.astype(np.float64).sum()).astype(np.float32).tolist()

    def blur(self) -> torch.Tensor:
        m, size = self.m, 2 * self.m + 1
        _replicate_border(self.rows, m, 2)
        if self.gaussian:
            x = _symmetric_filter(self.rows.narrow(2, 0, self.rows.shape[2] - 1), self.kernel, 2)
            return _symmetric_filter(F.pad(x, (m, m, 0, 0), mode="replicate"), self.kernel, 3)
        _window_sum(self.rows, size, 2, self.cols.narrow(3, m, self.out.shape[3]), self.scratch)
        _replicate_border(self.cols, m, 3)
        return _window_sum(self.cols, size, 3, self.out, self.scratch)


def _replicate_border(x: torch.Tensor, m: int, dim: int) -> None:
    """Fill the first m and last m + 1 entries of x along ``dim`` from the ones inside, in place."""
    inner = x.shape[dim] - 2 * m - 1
    x.narrow(dim, 0, m).copy_(x.narrow(dim, m, 1))
    x.narrow(dim, m + inner, m + 1).copy_(x.narrow(dim, m + inner - 1, 1))


def _solve_flow(matrices: torch.Tensor, regulariser: float, out: torch.Tensor) -> torch.Tensor:
    """Solve the 2x2 system G d = h per pixel: [N, 5, H, W] -> flow d [N, 2, H, W] (dx, dy).

    ``regulariser`` is added to det G (OpenCV's guard against flat, singular windows).
    """
    g_xx, g_yy, g_xy, h_x, h_y = matrices.unbind(1)
    inv_det = (g_xx * g_yy).addcmul_(g_xy, g_xy, value=-1).add_(regulariser).reciprocal_()
    dx, dy = out.unbind(1)
    torch.mul(g_yy, h_x, out=dx).addcmul_(g_xy, h_y, value=-1).mul_(inv_det)
    torch.mul(g_xx, h_y, out=dy).addcmul_(g_xy, h_x, value=-1).mul_(inv_det)
    return out
