"""A small Vision Transformer (Dosovitskiy et al. 2021) for CIFAR-sized images: ``vit_tiny``.

Patches of ``patch x patch`` pixels embedded by a strided convolution (``patch_embed.proj``), a
learned class token and position embedding, ``depth`` pre-norm blocks (LayerNorm, multi-head
self-attention, residual; LayerNorm, GELU MLP, residual), a final LayerNorm; the normalised class
token is the penultimate feature. ``vit_tiny`` has DeiT-Tiny's width (192, 3 heads, MLP 768,
12 blocks) with patch 4, so a 32x32 image is 64 tokens plus the class token. Parameter names
follow timm's ViT (``blocks.0.attn.qkv``, ...).

Attention is written out (``softmax(q k^T / sqrt(d)) v``) instead of calling
``scaled_dot_product_attention``: its fused kernels have no second derivative, and every
Hessian computation of the toolkit differentiates twice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ArchitectureError
from . import ZooModel, check_input, variant


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection and an output projection ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ArchitectureError(f"ViT width {dim} is not divisible by its {heads} heads; pick dim = heads x d.")
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over the tokens of ``x`` ``(N, T, dim)``."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """``fc2(gelu(fc1 x))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The two-layer perceptron applied to each token."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attn(norm1 x)``, then ``+ mlp(norm2 .)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches embedded by a convolution of kernel and stride ``patch``."""

    def __init__(self, cin: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, patches, dim)``."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(ZooModel):
    """ViT with a class token.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; ``H`` and ``W`` must be multiples of ``patch``.
    num_classes : int
        Number of classes.
    patch : int
        Patch side in pixels.
    dim, depth, heads, mlp : int
        Token width, number of blocks, attention heads, hidden width of the MLPs.
    head_bias : bool
        Whether the classifier has a bias.
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, patch: int = 4,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp: int = 768, head_bias: bool = True):
        super().__init__()
        cin, h, w = check_input("VisionTransformer", input_shape, min_side=patch)
        if h % patch or w % patch:
            raise ArchitectureError(f"ViT input {h}x{w} is not a whole number of {patch}x{patch} patches; pass "
                                    "arch_kwargs={'patch': p} with p dividing both sides.")
        self.patch_embed = PatchEmbed(cin, dim, patch)
        tokens = (h // patch) * (w // patch) + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes, bias=head_bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised class token after the last block."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1) + self.pos_embed
        return self.norm(self.blocks(tokens))[:, 0]


variant("vit_tiny", VisionTransformer, "A tiny ViT with patch 4", patch=4, dim=192, depth=12, heads=3, mlp=768)

__all__ = ["VisionTransformer", "Attention", "Block", "PatchEmbed"]
