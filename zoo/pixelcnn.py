"""PixelCNN: an autoregressive image model from masked convolutions (van den Oord et al. 2016).

A binary image x of H x W pixels (stored flattened, ``(batch, H W)``, row-major) is
factorised by the chain rule in raster order,

    p(x) = prod_{i=1}^{H W} Bernoulli(x_i | sigmoid(f(x)_i)),

where f is a stack of convolutions whose kernels are masked so that output pixel i sees
only pixels before i in raster order (rows above, and the pixels to its left in its row):

* the first layer, a k_0 x k_0 convolution 1 -> C with a **type A** mask (the centre tap
  off: pixel i does not see itself);
* L residual blocks (the paper's Figure 5, with C = 2h channels)
  h <- h + conv1x1_{h->C}(relu(convB_{h->h}(relu(conv1x1_{C->h}(relu(h)))))), whose k x k
  convolution has a **type B** mask (the centre tap on: the hidden unit at i may use
  hidden units at i, which themselves see only pixels before i);
* an output head relu -> 1x1 conv C -> C_h -> relu -> 1x1 conv C_h -> 1 (the logits).

One network pass gives every conditional (training and ``log_prob`` are exact and
normalised); sampling takes H W passes, one per pixel. Like the original PixelCNN (not the
gated one), the stack has a blind spot to the upper right of each pixel.

Parameters (the weights the masks keep, plus biases), with m_A = (k_0^2 - 1)/2 and
m_B = (k^2 + 1)/2 taps per kernel (odd k_0, k):

    **C (m_A + 1) + L (2 C h + h^2 m_B + 2 h + C) + (C + 1) C_h + (C_h + 1)**,  h = C / 2

(the masked-off taps are stored, as zeros that never receive a gradient, but are not
parameters of the distribution).

Recipe (``PixelCNN.paper``): van den Oord et al. report 81.30 nats on binarized MNIST
(Table 4, fixed binarization) without the full MNIST architecture in the text; the sizes and
the optimiser here follow pytorch-generative's ``pixel_cnn.reproduce`` (read in its
source: 15 residual blocks, 32 channels between blocks and 16 inside, a 32-channel head,
Adam 1e-3 decayed by 0.999977 per scheduler step, batch 256, 457 epochs, dynamic
binarization), whose README reports 81.45 nats and cites 81.30 for the paper. (Its forward
adds each block's input twice, h <- h + (h + F(h)); ours is the plain residual h + F(h).)
The paper's own table was not available here to check 81.30.

References:
    1. A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu. Pixel Recurrent Neural Networks.
       ICML 2016 (section 3.4 and Table 4).
    2. E. Hotaj, pytorch-generative (``models/autoregressive/pixel_cnn.py``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.autoregressive import AutoregressiveBernoulli, check_dim, check_sizes

__all__ = ["MaskedConv2d", "PixelCNN", "default_image_shape"]


def default_image_shape(data_dim: int) -> tuple[int, int]:
    """(s, s) when ``data_dim`` = s^2, else one row (1, data_dim)."""
    s = math.isqrt(data_dim)
    return (s, s) if s * s == data_dim else (1, data_dim)


class MaskedConv2d(nn.Conv2d):
    """A same-padded 2-D convolution whose kernel sees only taps before the centre in raster
    order: type ``"A"`` excludes the centre, type ``"B"`` includes it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        mask = torch.zeros(k, k)
        mask[: k // 2] = 1
        mask[k // 2, : k // 2 + (mask_type == "B")] = 1
        self.register_buffer("mask", mask.expand(out_channels, in_channels, k, k).clone())
        self.mask_type = mask_type
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def num_connected(self) -> int:
        """Weights the mask keeps plus biases."""
        return int(self.mask.sum()) + self.out_channels


class ResidualBlock(nn.Module):
    """h + conv1x1(relu(masked conv_B(relu(conv1x1(relu(h)))))), C -> C/2 -> C/2 -> C channels."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, half, 1),
            nn.ReLU(), MaskedConv2d(half, half, kernel, "B"),
            nn.ReLU(), nn.Conv2d(half, channels, 1),
        )

    def forward(self, h):
        return h + self.net(h)


class PixelCNN(AutoregressiveBernoulli):
    """PixelCNN with binary (Bernoulli) outputs for one-channel images.

    :param int data_dim: the number of pixels H W.
    :param image_shape: (H, W); default (s, s) when data_dim = s^2, else (1, data_dim).
    :param int channels: C (even), the channels between residual blocks (h = C / 2 inside).
    :param int num_layers: L, the residual blocks.
    :param int head_channels: C_h, the channels of the 1x1 output head.
    :param int first_kernel: k_0 (odd), the type-A kernel.
    :param int kernel: k (odd), the type-B kernels.
    :param int seed: seeds the initial weights.
    """

    # digits (1197 x 64): validation NLL 18.2 nats, test 19.0, after 100 epochs (~2.5 min on one
    # thread; lr 1e-3: 19.0 / 19.5). Below NADE and MADE there: 8x8 is small for 7x7 kernels.
    fit_defaults = dict(lr=3e-3, epochs=100, batch_size=64)
    #: traceable (static structure): the engine's fast path may replay its objective
    static_structure = True
    paper = dict(
        options=dict(channels=32, num_layers=15, head_channels=32),
        recipe=dict(lr=1e-3, batch_size=256, epochs=457, early_stopping=30),
        published=dict(fixed=81.30, dynamic=81.45),
        citation="van den Oord et al. 2016, Table 4 (fixed; as pytorch-generative's earlier README cites it, the paper's "
        "table not read here); pytorch-generative README (dynamic binarization)",
        note="sizes, batch, epochs and Adam as pytorch-generative's reproduce() (its lr decays x0.999977 per "
        "scheduler step, ours by the cosine schedule); the paper gives no MNIST recipe",
    )

    def __init__(
        self,
        data_dim: int = 64,
        image_shape=None,
        channels: int = 32,
        num_layers: int = 4,
        head_channels: int = 32,
        first_kernel: int = 7,
        kernel: int = 3,
        seed: int = 0,
    ):
        super().__init__()
        self.data_dim = n = check_dim(data_dim)
        shape = default_image_shape(n) if image_shape is None else tuple(int(s) for s in image_shape)
        if len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] != n:
            raise ValueError(f"image_shape must be (H, W) with H W = data_dim = {n}, got {image_shape!r}")
        self.image_shape = shape
        self.channels, self.head_channels = check_sizes((channels, head_channels), "channels")
        if isinstance(num_layers, bool) or int(num_layers) != num_layers or int(num_layers) < 0:
            raise ValueError(f"num_layers must be a non-negative integer, got {num_layers!r}")
        self.num_layers = int(num_layers)
        self.first_kernel, self.kernel = check_sizes((first_kernel, kernel), "kernel sizes")
        self._set_ordering("natural")  # raster order
        g = torch.Generator().manual_seed(int(seed))
        C, Ch = self.channels, self.head_channels
        self.first = MaskedConv2d(1, C, self.first_kernel, "A")
        if C % 2:
            raise ValueError(f"channels must be even (h = C / 2 inside a residual block), got {C}")
        self.blocks = nn.ModuleList(ResidualBlock(C, self.kernel) for _ in range(self.num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, Ch, 1), nn.ReLU(), nn.Conv2d(Ch, 1, 1))
        with torch.no_grad():  # seeded initialisation (PyTorch's default bounds), masks applied
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)
                    if isinstance(m, MaskedConv2d):
                        m.weight.mul_(m.mask)

    def conditional_logits(self, x):
        """Logits of p(x_i = 1 | pixels before i in raster order), ``(batch, H W)``."""
        h = self.first(x.reshape(-1, 1, *self.image_shape))
        for block in self.blocks:
            h = block(h)
        return self.head(h).reshape(x.shape[0], self.data_dim)

    @torch.no_grad()
    def _ancestral_sample(self, num):
        """H W network passes, one per pixel in raster order."""
        device = self.first.weight.device
        x = torch.zeros(num, self.data_dim, device=device)
        for i in range(self.data_dim):
            x[:, i] = torch.bernoulli(torch.sigmoid(self.conditional_logits(x)[:, i]))
        return x

    def num_parameters(self) -> int:
        C, Ch, L = self.channels, self.head_channels, self.num_layers
        h = C // 2
        m_a, m_b = (self.first_kernel**2 - 1) // 2, (self.kernel**2 + 1) // 2
        return C * (m_a + 1) + L * (2 * C * h + h * h * m_b + 2 * h + C) + (C + 1) * Ch + (Ch + 1)
