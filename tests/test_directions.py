"""Refusal directions: difference of means, projection, interpolation, safe storage."""

from __future__ import annotations

import pytest
import torch

from bruno.directions.mean import direction_at, load_directions, mean_difference, save_directions
from bruno.errors import BrunoError


def test_mean_difference_is_unit_and_points_from_harmless_to_harmful():
    harmful = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    harmless = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    d = mean_difference(harmful, harmless, orthogonalize=False)
    assert torch.allclose(d, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_projected_direction_is_orthogonal_to_harmless_mean():
    g = torch.Generator().manual_seed(0)
    harmful, harmless = torch.randn(5, 16, generator=g).double(), torch.randn(5, 16, generator=g).double()
    d = mean_difference(harmful, harmless, orthogonalize=True)
    cos = torch.nn.functional.cosine_similarity(d.double(), harmless, dim=-1)
    assert cos.abs().max() < 1e-6
    assert torch.allclose(d.norm(dim=-1), torch.ones(5), atol=1e-6)
    plain = mean_difference(harmful, harmless, orthogonalize=False)
    assert (d * plain).sum(-1).min() > 0  # still the same general direction


def test_direction_at_uses_layer_offset_and_interpolates():
    rows = torch.eye(4)  # row 0 = embeddings, rows 1..3 = layers 0..2
    assert torch.allclose(direction_at(rows, 0.0), rows[1])
    assert torch.allclose(direction_at(rows, 2.0), rows[3])
    mid = direction_at(rows, 0.5)
    assert torch.allclose(mid, (rows[1] + rows[2]) / 2**0.5)
    with pytest.raises(ValueError):
        direction_at(rows, 2.5)


def test_directions_roundtrip_weights_only(tmp_path):
    path = tmp_path / "directions.pt"
    save_directions(path, {"directions": torch.ones(3, 4), "metadata": {"model": "x", "n_layers": 2}})
    payload = load_directions(path)
    assert payload["metadata"]["model"] == "x"
    assert torch.equal(payload["directions"], torch.ones(3, 4))
    with pytest.raises(BrunoError, match="not found"):
        load_directions(tmp_path / "missing.pt")


class Evil:
    """Any non-tensor class: unpickling it would run arbitrary code paths."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_directions(path)
