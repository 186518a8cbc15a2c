"""Parameterizations of a density field: pixels, and the CNN generator of Hoyer et al. (2019).

Both produce unconstrained logits of shape ``(nely, nelx)``; :func:`constrained_sigmoid` maps
logits to densities in (0, 1) whose mean over the designable elements equals the volume fraction
exactly: ``x = sigmoid(logits + b)`` with the scalar offset ``b`` found by bisection. Its
gradient goes through ``b`` implicitly (``db/dz_j = -s'_j / sum_k s'_k``), in closed form, so
the bisection is not differentiated.

The CNN (the paper's ``CNNModel``): a trainable latent vector ``z`` (128 values, standard
normal), a dense layer to a ``(32, nely / 8, nelx / 8)`` image, then five blocks of tanh,
bilinear upsampling (by 1, 2, 2, 2, 1), global normalization, a 5x5 convolution (128, 64, 32,
16 and 1 channels) and a trainable per-pixel bias (scaled by 10). Initialization as in the
paper: orthogonal dense weights with gain ``sqrt(max(fan_out / fan_in, 1))``, variance-scaling
(fan-in, truncated normal) convolution kernels, zero biases. It runs in float32; the physics in
float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simdiff.sims.base import ValidationError

__all__ = ["CNNParam", "PixelParam", "constrained_sigmoid", "make_param"]


class _ConstrainedSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, volfrac: float, mask: torch.Tensor, tol: float):
        z = logits.detach().to(torch.float64)
        zd = z[mask]
        target = math.log(volfrac) - math.log1p(-volfrac)
        lo, hi = target - float(zd.max()), target - float(zd.min())
        # mean(sigmoid(z + b)) is increasing in b; [lo, hi] brackets the root.
        for _ in range(200):
            b = 0.5 * (lo + hi)
            if torch.sigmoid(zd + b).mean() > volfrac:
                hi = b
            else:
                lo = b
            if hi - lo < tol:
                break
        b = 0.5 * (lo + hi)
        x = torch.sigmoid(z + b)
        ctx.save_for_backward(x, mask)
        return x.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, mask = ctx.saved_tensors
        g = grad.to(torch.float64)
        ds = x * (1 - x)  # sigmoid'
        ds_m = torch.where(mask, ds, torch.zeros_like(ds))
        # every element moves with b, but only designable ones determine it
        shift = (g * ds).sum() / ds_m.sum()
        out = ds * (g - torch.where(mask, shift, torch.zeros_like(shift)))
        return out.to(grad.dtype), None, None, None


def constrained_sigmoid(logits: torch.Tensor, volfrac: float, mask: torch.Tensor | None = None,
                        tol: float = 1e-13) -> torch.Tensor:
    """``sigmoid(logits + b)`` with ``b`` chosen so that its mean over ``mask`` (default: every
    element) is ``volfrac``; float64 output."""
    if not 0.0 < volfrac < 1.0:
        raise ValidationError(f"volfrac={volfrac!r} must lie strictly between 0 and 1")
    if mask is None:
        mask = torch.ones(logits.shape, dtype=torch.bool)
    return _ConstrainedSigmoid.apply(logits.to(torch.float64), float(volfrac), mask, tol)


class PixelParam(nn.Module):
    """One free logit per element, zero at the start (uniform density ``volfrac`` once
    constrained)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(shape, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.logits


class _AddOffset(nn.Module):
    def __init__(self, channels: int, height: int, width: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.bias = nn.Parameter(torch.zeros(1, channels, height, width))

    def forward(self, x):
        return x + self.scale * self.bias


def _global_normalization(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) * torch.rsqrt(var + eps)


def _variance_scaling_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Keras ``VarianceScaling()``: fan-in, truncated normal (cut at two standard deviations,
    rescaled so the kept distribution has variance 1 / fan_in)."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        values = torch.randn(weight.shape, generator=generator)
        while True:
            bad = values.abs() > 2
            if not bad.any():
                break
            values[bad] = torch.randn(int(bad.sum()), generator=generator)
        weight.copy_(values * std)


class CNNParam(nn.Module):
    """The paper's CNN generator of logits for a ``(nely, nelx)`` grid.

    Raises:
        ValidationError: when ``nely`` or ``nelx`` is not a multiple of the total upsampling
            factor (8 with the default ``resizes``).
    """

    def __init__(self, shape: tuple[int, int], *, seed: int = 0, latent_size: int = 128,
                 dense_channels: int = 32, resizes=(1, 2, 2, 2, 1),
                 conv_filters=(128, 64, 32, 16, 1), offset_scale: float = 10.0,
                 kernel_size: int = 5, latent_scale: float = 1.0,
                 dense_init_scale: float = 1.0) -> None:
        super().__init__()
        if len(resizes) != len(conv_filters):
            raise ValidationError("resizes and conv_filters must have the same length")
        nely, nelx = shape
        total = math.prod(resizes)
        if nely % total or nelx % total or nely < total or nelx < total:
            raise ValidationError(
                f"the CNN upsamples by {total} in all (resizes {tuple(resizes)}), so the grid's "
                f"nely x nelx = {nely} x {nelx} must be positive multiples of {total}; "
                f"nearest that work: {max(total, round(nely / total) * total)} x "
                f"{max(total, round(nelx / total) * total)} (or use --param pixel)")
        gen = torch.Generator().manual_seed(seed)
        self.h, self.w = nely // total, nelx // total
        self.dense_channels = dense_channels
        self.resizes = tuple(resizes)
        self.z = nn.Parameter(torch.randn(1, latent_size, generator=gen) * latent_scale)
        out = self.h * self.w * dense_channels
        self.dense = nn.Linear(latent_size, out)
        with torch.no_grad():
            gain = dense_init_scale * math.sqrt(max(out / latent_size, 1))
            # Orthogonal (Keras' orthogonal initializer), drawn from the seeded generator.
            tall = out >= latent_size
            a = torch.randn((out, latent_size) if tall else (latent_size, out), generator=gen,
                            dtype=torch.float64)
            q, r = torch.linalg.qr(a)
            q = q * torch.sign(torch.diagonal(r))
            self.dense.weight.copy_(gain * (q if tall else q.T))
            self.dense.bias.zero_()
        self.convs = nn.ModuleList()
        self.offsets = nn.ModuleList()
        channels, h, w = dense_channels, self.h, self.w
        for resize, filters in zip(resizes, conv_filters):
            h, w = h * resize, w * resize
            conv = nn.Conv2d(channels, filters, kernel_size, padding=kernel_size // 2)
            _variance_scaling_(conv.weight, gen)
            with torch.no_grad():
                conv.bias.zero_()
            self.convs.append(conv)
            self.offsets.append(_AddOffset(filters, h, w, offset_scale) if offset_scale
                                else nn.Identity())
            channels = filters

    def forward(self) -> torch.Tensor:
        net = self.dense(self.z).reshape(1, self.h, self.w, self.dense_channels)
        net = net.permute(0, 3, 1, 2)  # Keras reshapes to channels-last
        for resize, conv, offset in zip(self.resizes, self.convs, self.offsets):
            net = torch.tanh(net)
            if resize != 1:
                net = F.interpolate(net, scale_factor=resize, mode="bilinear", align_corners=False)
            net = _global_normalization(net)
            net = offset(conv(net))
        return net[0, 0].to(torch.float64)


PARAMS = ("pixel", "cnn")


def make_param(name: str, shape: tuple[int, int], *, seed: int = 0, **options) -> nn.Module:
    """``pixel`` or ``cnn`` parameterization of a ``shape = (nely, nelx)`` grid."""
    if name == "pixel":
        return PixelParam(shape)
    if name == "cnn":
        return CNNParam(shape, seed=seed, **options)
    raise ValidationError(f"param must be one of {PARAMS}, got {name!r}")
