"""The tied head: the output matrix is the backbone's input embedding."""
from __future__ import annotations

from spamlang.errors import ConfigError
from spamlang.heads.base import Head, register_head
from spamlang.heads.linear import LinearHead


@register_head
class TiedHead(LinearHead):
    """Tied head: W is the input embedding (V x D, needs embed_dim == d_model), logits h Wᵀ."""

    name = "tied"
    shares_embedding = True

    def __init__(self, vocab_size, d_model, rank, embedding, params=None):
        Head.__init__(self, vocab_size, d_model, rank, embedding, params)
        self.embedding = embedding  # shared with the backbone; its weight is the head's W (V, D)

    @classmethod
    def check(cls, vocab_size, d_model, rank, embed_dim):
        super().check(vocab_size, d_model, rank, embed_dim)
        if embed_dim != d_model:
            raise ConfigError(f"head 'tied' needs embed_dim == d_model to share the input embedding "
                              f"(got embed_dim={embed_dim}, d_model={d_model})")

    @property
    def weight(self):
        return self.embedding.weight
