"""A small Vision Transformer sized for CPU (dim 64-96, 4 blocks).

Attention is written out with separate ``q``/``k``/``v``/``proj`` linears and an explicit head reshape, so
tracing sees every projection and the head structure (a fused qkv or ``nn.MultiheadAttention`` hides them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from host.models._common import scaled


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor, batch: int, tokens: int) -> Tensor:
        # (B, N, H*D) -> (B*H, N, D): 3-D batched matmuls lower to XNNPACK as they are, while a 4-D
        # torch.matmul decomposes into expand + bmm whose expands stay on ExecuTorch's portable kernels
        # (ViT-tiny: 10 instead of 18 delegate partitions, 1 instead of 17 non-delegated expands).
        return x.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2).reshape(
            batch * self.heads, tokens, self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        q = self._split_heads(self.q(x), batch, tokens)
        k = self._split_heads(self.k(x), batch, tokens)
        v = self._split_heads(self.v(x), batch, tokens)
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
        out = torch.bmm(attn, v).reshape(batch, self.heads, tokens, self.head_dim).transpose(1, 2)
        return self.proj(out.reshape(batch, tokens, self.heads * self.head_dim))


class Mlp(nn.Module):
    """Two linears with GELU in between."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def patch_size_for(image_size: int) -> int:
    """Patch size giving a handful of tokens: 4 px for 16+ px images, 2 px below that."""
    return 4 if image_size >= 16 else 2 if image_size >= 4 else 1


class VisionTransformer(nn.Module):
    """ViT with a conv patch embedding, learned position embedding, class token and a linear head."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        dim = scaled(dim, width, heads)
        patch = patch_size_for(image_size)
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
