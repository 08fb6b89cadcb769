"""Backbones: registry, output shapes, causality and configuration checks."""
from __future__ import annotations

import pytest
import torch

from spamlang.backbones.base import BACKBONES
from spamlang.errors import ConfigError

V, T = 30, 12


def build(name, d_model, embed_dim, layers, n_heads=4):
    """A backbone's typed config from the settings it takes (the GRU takes no n_heads)."""
    cls = BACKBONES.get(name)
    extra = {"n_heads": n_heads} if name == "transformer" else {}
    return cls, cls.Config(vocab_size=V, d_model=d_model, embed_dim=embed_dim, layers=layers, seq_len=T, **extra)


@pytest.mark.parametrize("name", ["transformer", "gru"])
@pytest.mark.parametrize("d_model,embed_dim", [(32, 32), (32, 8)])
def test_shape_and_causality(name, d_model, embed_dim):
    torch.manual_seed(0)
    cls, config = build(name, d_model, embed_dim, 2)
    model = cls(config).double()
    tokens = torch.randint(0, V, (3, T))
    out = model(tokens)
    assert out.shape == (3, T, d_model)
    for t in (0, 5, T - 2):
        changed = tokens.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % V  # every future token differs
        out2 = model(changed)
        torch.testing.assert_close(out2[:, :t + 1], out[:, :t + 1], rtol=0, atol=1e-7)
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])


@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_embedding_is_the_shared_input_embedding(name):
    cls, config = build(name, 16, 16, 1, 2)
    model = cls(config)
    assert model.embedding.weight.shape == (V, 16)
    model(torch.randint(0, V, (2, T))).sum().backward()
    assert model.embedding.weight.grad is not None


def test_registry_lists_the_backbones():
    assert {"transformer", "gru"} <= set(BACKBONES.names())


@pytest.mark.parametrize("name,d_model,embed_dim,layers,n_heads,match", [
    ("transformer", 30, 30, 2, 4, "divisible"),
    ("transformer", 32, 32, 0, 4, "layers"),
    ("transformer", 32, 32, 2, 0, "n_heads"),
    ("transformer", 32, 0, 2, 4, "embed_dim"),
    ("gru", 32, 32, 0, 4, "layers"),
    ("gru", 0, 32, 1, 4, "d_model"),
])
def test_check_rejects_impossible_configs(name, d_model, embed_dim, layers, n_heads, match):
    cls, config = build(name, d_model, embed_dim, layers, n_heads)
    with pytest.raises(ConfigError, match=match):
        cls.check(config)


def test_check_accepts_valid_configs():
    for cls, config in (build("transformer", 32, 8, 2, 4), build("gru", 30, 30, 1)):
        cls.check(config)


def test_the_gru_takes_no_n_heads():
    gru = BACKBONES.get("gru")
    with pytest.raises(TypeError, match="n_heads"):
        gru.Config(vocab_size=V, d_model=8, embed_dim=8, layers=1, seq_len=T, n_heads=2)
