"""Network building blocks shared by the models: a masked set transformer and small MLPs.

Padding is handled through the cloud weights: attention logits get ``+ log(weight)``, so a
padded point (weight 0) is never attended to, and a point of weight ``w`` counts like ``w``
copies of itself. There is no positional encoding, so every block is permutation-equivariant
over the points of a cloud, and weighted pooling makes the result permutation-invariant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(
    sizes: list[int], *, activation: type[nn.Module] = nn.LeakyReLU, final_activation: bool = False
) -> nn.Sequential:
    """Dense layers ``sizes[0] → sizes[1] → … → sizes[-1]`` with an activation between them."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class WeightedAttention(nn.Module):
    """Multi-head self-attention whose keys are weighted by the point weights of the cloud."""

    def __init__(self, width: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"`width`={width} must be a multiple of `n_heads`={n_heads}.")
        self.n_heads = n_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, tokens: torch.Tensor, log_weights: torch.Tensor | None) -> torch.Tensor:
        batch, size, width = tokens.shape
        q, k, v = self.qkv(tokens).view(batch, size, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        bias = None if log_weights is None else log_weights[:, None, None, :].to(q.dtype)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(attended.transpose(1, 2).reshape(batch, size, width))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: weighted self-attention, then an MLP, each residual."""

    def __init__(self, width: int, n_heads: int, mlp_width: int, dropout: float = 0.0):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = WeightedAttention(width, n_heads, dropout)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = mlp([width, mlp_width, width])

    def forward(self, tokens: torch.Tensor, log_weights: torch.Tensor | None) -> torch.Tensor:
        tokens = tokens + self.attention(self.attention_norm(tokens), log_weights)
        return tokens + self.mlp(self.mlp_norm(tokens))


class SetTransformer(nn.Module):
    """A stack of transformer blocks over the points of weighted clouds, without positions.

    Parameters
    ----------
    in_dim
        Dimension of the input points.
    width
        Width of the token stream.
    n_layers
        Number of transformer blocks.
    n_heads
        Attention heads per block.
    mlp_width
        Hidden width of each block's MLP.
    dropout
        Dropout on the attention probabilities during training.

    Notes
    -----
    ``forward(points, weights, condition=None)`` returns one token per point, shape
    ``(batch, size, width)``; padded points (weight 0) get tokens too but never influence the
    real ones. ``condition`` (shape ``(batch, width)``), when given, is added to the stream
    before every block: the way a time or label enters a conditioned model.

    Examples
    --------
    >>> import torch
    >>> from spatialot.models import SetTransformer
    >>> encoder = SetTransformer(2, width=16, n_layers=1, n_heads=2, mlp_width=32)
    >>> points, weights = torch.randn(4, 5, 2), torch.full((4, 5), 0.2)  # 4 clouds of 5 points
    >>> encoder(points, weights).shape
    torch.Size([4, 5, 16])
    """

    def __init__(
        self,
        in_dim: int,
        width: int = 128,
        n_layers: int = 3,
        n_heads: int = 4,
        mlp_width: int = 512,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, n_heads, mlp_width, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)

    def forward(
        self, points: torch.Tensor, weights: torch.Tensor | None = None, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        log_weights = None if weights is None else torch.log(weights)
        tokens = self.embed(points)
        for block in self.blocks:
            if condition is not None:
                tokens = tokens + condition[:, None, :]
            tokens = block(tokens, log_weights)
        return self.norm(tokens)


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every dense layer of ``module``.

    PyTorch's default draws biases at random and weights from a narrower range; the JAX
    models that the methods come from (Flax's defaults in the authors' code) start this way,
    and the training schedules they publish assume it.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def weighted_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pool tokens ``(batch, size, width)`` with weights ``(batch, size)`` summing to 1 per cloud.

    Examples
    --------
    >>> import torch
    >>> tokens = torch.arange(6.0).reshape(1, 3, 2)
    >>> weighted_mean(tokens, torch.tensor([[0.5, 0.5, 0.0]]))
    tensor([[1., 2.]])
    """
    return torch.einsum("bs,bsw->bw", weights.to(tokens.dtype), tokens)
