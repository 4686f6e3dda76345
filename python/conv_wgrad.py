"""Convolutions whose weight gradient is computed by matrix products (a CPU training speed-up).

On the CPU, oneDNN's kernels for the weight gradient of the paper's strided 4x4 convolutions are
the slowest part of a training step, in bf16 (AMX) no faster than in float32: profiled on the
MNIST network (batch 100, 2 threads, Xeon with AMX) they took about half of a bf16 step, while a
bf16 matrix product of the same size ran 7-10x faster. :func:`use_matmul_weight_grad` makes the
large stride-2 ``Conv2d`` and ``ConvTranspose2d`` layers of a model compute it so:

    dW[o, i, kh, kw] = sum over (n, h, w) of g[n, o, h, w] * s[n, i, stride h + kh, stride w + kw]

(s the zero-padded input and g the output gradient for a convolution; for a transposed
convolution the roles swap: s is the padded output gradient and g the input), as k^2 matrix
products of g (N H W, O) with shifted views of the stride x stride phases of s (see
:func:`patch_weight_grad`): one copy of s and of g, where gathering the k^2 patches would write
a tensor k^2 / stride^2 = 4 times the size of s into freshly allocated pages (for the
MNIST network's 512 -> 256 transposed convolution, one thread: 350 ms with the patches, 240 ms
so). The forward pass and the input gradient stay oneDNN's. The
parameters, state_dict and results are those of the layers (the same sums, in another order:
equal up to rounding).

Only layers with in x out channels >= ``MIN_CHANNEL_PRODUCT`` are converted: for small layers the
copies cost more than oneDNN's kernel saves (benchmarks/train_speed.py --matmul-wgrad with the
patch gathering, converting
every strided layer: 2.15x fp32 for the full-width MNIST network against 1.57x with oneDNN's
weight gradient, but 1.15x against 1.27x at width 0.25 and 0.80x against 2.21x for digits at
width 0.25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNEL_PRODUCT = 256 * 512  # the MNIST network's layers from 256 -> 512 channels up (width 1)


def patch_weight_grad(source: torch.Tensor, grad: torch.Tensor, kernel_size: int, stride: int,
                      padding: int) -> torch.Tensor:
    """The weight gradient (C_grad, C_source, k, k) of the convolution that maps ``source`` (N,
    C_source, H, W) to outputs shaped like ``grad`` (N, C_grad, Ho, Wo) with ``kernel_size``,
    ``stride`` and ``padding`` (no dilation, no groups).

    The padded source is split into its stride x stride phases (rows s j + p, columns s i + q),
    each stored as a matrix of (n, j, i) rows of C_source channels; the output gradient is
    zero-padded to the same (n, j, i) grid. The tap (kh, kw) = (s a + p, s b + q) then reads
    phase (p, q) at (j, i) = (h + a, w + b): the same matrix shifted by a row_w + b rows, so its
    gradient is one matrix product of two plain matrices, and no k^2-times-larger patch tensor is
    ever built (the padded rows of the gradient are zero and add nothing)."""
    n, _, height, width = source.shape
    c_grad, out_h, out_w = grad.shape[1], grad.shape[2], grad.shape[3]
    k, s = kernel_size, stride
    taps = -(-k // s)  # shifts a per phase: kh = s a + p < k
    rows_h, rows_w = out_h + taps - 1, out_w + taps - 1  # the phase grid (j, i)
    grid = n * rows_h * rows_w
    # channels-last source, padded (or cropped: those rows feed no tap) to s rows_h x s rows_w
    src = F.pad(source.permute(0, 2, 3, 1),
                (0, 0, padding, s * rows_w - width - padding, padding, s * rows_h - height - padding))
    # phases[p, q] = src[:, p::s, q::s] as a (grid, C) matrix; the tail rows keep the last
    # shifted matrix in bounds
    tail = (taps - 1) * (rows_w + 1)
    phases = src.new_zeros(s, s, grid + tail, src.shape[3])
    phases[:, :, :grid].view(s, s, n, rows_h, rows_w, -1).copy_(
        src.reshape(n, rows_h, s, rows_w, s, -1).permute(2, 4, 0, 1, 3, 5))
    g = grad.new_zeros(n, rows_h, rows_w, c_grad)
    g[:, :out_h, :out_w] = grad.permute(0, 2, 3, 1)
    g_t = g.view(grid, c_grad).t()
    weight = grad.new_empty(k, k, c_grad, src.shape[3])
    for kh in range(k):
        for kw in range(k):
            shift = (kh // s) * rows_w + kw // s
            torch.mm(g_t, phases[kh % s, kw % s, shift:shift + grid], out=weight[kh, kw])
    return weight.permute(2, 3, 0, 1)


class _Convolution(torch.autograd.Function):
    """aten.convolution forward and input gradient; the weight gradient by patch_weight_grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, transposed):
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, output_padding, transposed, bias is not None)
        return torch.ops.aten.convolution(x, weight, bias, (stride, stride), (padding, padding), (1, 1), transposed,
                                          (output_padding, output_padding), 1)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, output_padding, transposed, has_bias = ctx.args
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, (stride, stride), (padding, padding), (1, 1), transposed,
                (output_padding, output_padding), 1, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            k = weight.shape[2]
            if transposed:  # weight (C_in, C_out, k, k): the convolution from grad_out's space to x's
                grad_w = patch_weight_grad(grad_out, x, k, stride, padding)
            else:
                grad_w = patch_weight_grad(x, grad_out, k, stride, padding)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    """forward() of a layer converted by :func:`use_matmul_weight_grad`."""
    weight, bias = self.weight, self.bias
    device = x.device.type
    if torch.is_autocast_enabled(device):  # autocast does not reach into a custom Function: cast here
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    transposed = isinstance(self, nn.ConvTranspose2d)
    with torch.autocast(device, enabled=False):
        return _Convolution.apply(x, weight, bias, self.stride[0], self.padding[0],
                                  self.output_padding[0] if transposed else 0, transposed)


def _convertible(layer: nn.Module, min_channel_product: int) -> bool:
    if type(layer) not in (nn.Conv2d, nn.ConvTranspose2d):
        return False
    if layer.in_channels * layer.out_channels < min_channel_product:
        return False
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    out_pad = getattr(layer, "output_padding", (0, 0))
    return (k[0] == k[1] and s[0] == s[1] > 1 and isinstance(p, tuple) and p[0] == p[1] and out_pad[0] == out_pad[1]
            and layer.groups == 1 and layer.dilation == (1, 1) and layer.padding_mode == "zeros")


def use_matmul_weight_grad(model: nn.Module, min_channel_product: int = MIN_CHANNEL_PRODUCT) -> int:
    """Make every strided square ``Conv2d``/``ConvTranspose2d`` of ``model`` (no groups, no
    dilation, zero padding) with in x out channels >= ``min_channel_product`` compute its weight
    gradient as one matrix product; returns how many layers were converted. The layers keep
    their parameters and state_dict."""
    count = 0
    for layer in model.modules():
        if _convertible(layer, min_channel_product):
            layer.forward = _forward.__get__(layer)
            count += 1
    return count
