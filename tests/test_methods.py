"""Math of the direction methods: contrastive PCA, probe, sign-aligned ensemble, concept cones, CAA, calibration,
biprojection, and warm-start parameter sets."""

from __future__ import annotations

import pytest
import torch

from bruno.directions.caa import compliance_direction
from bruno.directions.cones import find_cones
from bruno.directions.mean import DirectionSettings
from bruno.directions.methods import (
    align_sign,
    calibration_factor,
    contrastive_pca,
    eigenvalue_weights,
    ensemble,
    probe_directions,
)
from bruno.edit.plan import AblationParams, ComponentKernel, DirectionSet, EditTargets, biproject, build_edits
from bruno.jobs.directions import compute
from bruno.search.space import PRESETS, SearchSettings, SearchSpace, preset_values, warm_start_values

D = 16


def planted(n: int, direction: torch.Tensor, shift: float, seed: int, rows: int = 3) -> torch.Tensor:
    """Residuals [n, rows, D]: noise plus `shift` along `direction` (in every row)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rows, D, generator=g) * 0.3 + shift * direction


def unit(seed: int) -> torch.Tensor:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_contrastive_pca_recovers_a_planted_variance_direction():
    r = unit(1)
    g = torch.Generator().manual_seed(2)
    spread = torch.randn(200, 1, 1, generator=g) * 3.0
    harmful = planted(200, torch.zeros(D), 0, 3) + spread * r + 0.5 * r  # extra variance along r
    harmless = planted(200, torch.zeros(D), 0, 4)
    result = contrastive_pca(harmful, harmless, n_components=2, alpha=1.0)
    assert result.components.shape == (2, 3, D)
    assert abs(float(result.components[0, 1] @ r)) > 0.95
    assert float(result.components[0, 1] @ r) > 0  # sign aligned with the mean difference
    assert result.weights[0] == 1.0 and result.weights[1] <= 1.0


def test_eigenvalue_weights():
    w = eigenvalue_weights(torch.tensor([4.0, 2.0, 1.0]), "proportional")
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.25])
    w = eigenvalue_weights(torch.tensor([4.0, 2.0, 1.0]), "softmax")
    assert w[0] == 1.0 and 1.0 > w[1] > w[2] > 0


def test_probe_finds_the_separating_direction():
    r = unit(5)
    harmful, harmless = planted(60, r, 1.0, 6), planted(60, r, -1.0, 7)
    result = probe_directions(harmful, harmless, seed=0)
    assert min(result.cv_accuracy) > 0.95
    assert float(result.directions[1] @ r) > 0.8  # points towards harmful


def test_ensemble_aligns_pca_sign_before_averaging():
    probe = torch.stack([unit(1), unit(2)])
    pca = -probe  # a PCA vector with the "wrong" arbitrary sign
    combined = ensemble(probe, pca, 0.7, 0.3)
    assert torch.allclose(combined, probe, atol=1e-6)
    assert torch.equal(align_sign(pca, probe), probe)


def test_concept_cones_find_planted_clusters_and_report_categories():
    a, b = unit(10), unit(11)
    harmful = torch.cat([planted(30, a, 3.0, 12), planted(30, b, 3.0, 13)])
    harmless = planted(40, torch.zeros(D), 0.0, 14)
    categories = ["weapons"] * 30 + ["fraud"] * 30
    result = find_cones(harmful, harmless, categories, n_cones=2, min_cone_size=5, directions_per_cone=2,
                        min_silhouette=0.1, layer_fraction=None, seed=0)  # fmt: skip
    assert result.accepted and result.silhouette > 0.3
    assert sorted(c["dominant_category"] for c in result.info) == ["fraud", "weapons"]
    assert all(c["purity"] == 1.0 for c in result.info)
    assert result.shares == pytest.approx([0.5, 0.5])
    dirs = result.directions  # [cones, 2, rows, D]
    assert dirs.shape == (2, 2, 3, D)
    assert abs(float((dirs[:, 0] * dirs[:, 1]).sum(-1).abs().max())) < 1e-5  # second ⟂ first
    best = {c["dominant_category"]: i for i, c in enumerate(result.info)}
    assert float(dirs[best["weapons"], 0, 1] @ a) > 0.8


def test_concept_cones_fall_back_when_silhouette_is_low():
    harmful = planted(60, torch.zeros(D), 0.0, 15)  # one blob: no cluster structure
    harmless = planted(40, torch.zeros(D), 0.0, 16)
    result = find_cones(harmful, harmless, ["x"] * 60, 3, 5, 1, 0.5, None, 0)
    assert not result.accepted and "silhouette" in result.reason and result.directions is None


def test_caa_guards():
    r = unit(20)
    residuals = planted(40, torch.zeros(D), 0.0, 21)
    refusal = torch.stack([r] * 3)
    skipped = compliance_direction(residuals, [True] * 40, refusal, min_examples=5, max_overlap=0.5)
    assert not skipped["applied"] and "compliant" in skipped["reason"]
    # compliant prompts differ from refusing ones along c ⟂ r: applied
    c = unit(22) - (unit(22) @ r) * r
    c = c / c.norm()
    mixed = torch.cat([planted(20, c, 2.0, 23), planted(20, torch.zeros(D), 0.0, 24)])
    ok = compliance_direction(mixed, [False] * 20 + [True] * 20, refusal, 5, 0.5)
    assert ok["applied"] and float(ok["direction"][1] @ c) > 0.9
    # along the refusal direction itself: overlap too high, skipped
    overlapping = torch.cat([planted(20, -r, 2.0, 25), planted(20, torch.zeros(D), 0.0, 26)])
    bad = compliance_direction(overlapping, [False] * 20 + [True] * 20, refusal, 5, 0.5)
    assert not bad["applied"] and "overlap" in bad["reason"]


def test_calibration_factor_on_known_projections():
    r = torch.zeros(D)
    r[0] = 1.0
    values = torch.arange(1, 101, dtype=torch.float32)  # |projection| 1..100, mean 50.5
    harmful = torch.zeros(100, 3, D)
    harmful[:, 2, 0] = values
    rows = torch.stack([r] * 3)
    out = calibration_factor(
        harmful, rows, layer_fraction=0.5, target_percentile=0.75, min_factor=0.5, max_factor=2.0
    )
    assert out["layer"] == 1
    assert out["factor"] == pytest.approx(float(torch.quantile(values, 0.75)) / 50.5)
    clamped = calibration_factor(harmful, rows, 0.5, 1.0, 0.5, 1.5)
    assert clamped["factor"] == 1.5 and clamped["raw_factor"] > 1.5


def test_biprojection_is_orthogonal_to_the_target_layer_mean():
    d = biproject(unit(30), unit(31) * 5)
    assert abs(float(d @ unit(31))) < 1e-6 and float(d.norm()) == pytest.approx(1.0)


def test_directions_compute_applies_projection_to_every_set_and_records_fallbacks():
    a, b = unit(40), unit(41)
    harmful = torch.cat([planted(30, a, 3.0, 42), planted(30, b, 3.0, 43)]) + 2.0 * unit(44)
    harmless = planted(40, torch.zeros(D), 0.0, 45) + 2.0 * unit(44)
    settings = DirectionSettings(
        direction_method="ensemble_probe_pca", orthogonalize_direction=True, n_refusal_directions=2,
        pca_alpha=1.0, eigenvalue_weight_method="softmax", eigenvalue_weight_temperature=1.0,
        ensemble_weight_probe=0.7, ensemble_weight_pca=0.3, use_concept_cones=True, n_concept_cones=2,
        min_cone_size=5, directions_per_cone=2, min_silhouette_score=0.1, cone_layer_fraction=None,
        use_caa=True, caa_min_examples=5, caa_max_overlap=0.5, caa_addition_strength=0.3,
        use_activation_calibration=True, activation_target_percentile=0.75, activation_calibration_layer_frac=0.6,
        activation_calibration_min_factor=0.5, activation_calibration_max_factor=2.0,
    )  # fmt: skip
    tensors, meta = compute(harmful, harmless, ["w"] * 30 + ["f"] * 30, settings, seed=0, refused=[True] * 60)
    mean_unit = torch.nn.functional.normalize(tensors["harmless_mean"], dim=-1)
    for key in ("directions", "extra_directions", "cone_directions"):
        assert (tensors[key] * mean_unit).sum(-1).abs().max() < 1e-5, key  # projection reaches every set used
    assert meta["concept_cones"]["status"] == "used"
    assert (
        meta["caa"]["applied"] is False and "caa_direction" not in tensors
    )  # recorded, not silently dropped
    assert "calibration_factor" in tensors


@pytest.mark.parametrize("method", ["mean_difference", "ensemble_probe_pca"])
def test_cones_with_more_directions_than_pca_components_load(method):
    # Regression: with one refusal direction and two directions per cone, the weights list was one short.
    a, b = unit(40), unit(41)
    harmful = torch.cat([planted(30, a, 3.0, 42), planted(30, b, 3.0, 43)]) + 2.0 * unit(44)
    harmless = planted(40, torch.zeros(D), 0.0, 45) + 2.0 * unit(44)
    settings = DirectionSettings(
        direction_method=method, orthogonalize_direction=True, n_refusal_directions=1,
        pca_alpha=1.0, eigenvalue_weight_method="softmax", eigenvalue_weight_temperature=1.0,
        ensemble_weight_probe=0.7, ensemble_weight_pca=0.3, use_concept_cones=True, n_concept_cones=2,
        min_cone_size=5, directions_per_cone=2, min_silhouette_score=0.1, cone_layer_fraction=None,
        use_caa=False, use_activation_calibration=False,
    )  # fmt: skip
    tensors, meta = compute(harmful, harmless, ["w"] * 30 + ["f"] * 30, settings, seed=0)
    assert meta["concept_cones"]["status"] == "used"
    assert tensors["cone_direction_weights"].shape == (2,)
    cones = DirectionSet.from_payload({**tensors, "metadata": meta}).cones
    assert len(cones) == 2 and all(len(directions) == 2 for _, directions in cones)


def test_cone_edits_use_every_cone_weighted_by_share(tiny_model_dir):
    from bruno.model.loading import ModelSettings, load_model

    model, _ = load_model(tiny_model_dir, ModelSettings())
    targets = EditTargets(model, ["attn.o_proj"])
    g = torch.Generator().manual_seed(0)
    rows = [torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=-1) for _ in range(2)]
    dset = DirectionSet(rows[0], cones=[(0.25, [(rows[0], 1.0)]), (0.75, [(rows[1], 1.0)])])
    params = AblationParams(
        "per layer", None, {"attn.o_proj": ComponentKernel(1.0, 1.0, 1.0, 5.0)}, weight_scale=2.0
    )
    edits = build_edits(targets, dset, params, "none")
    u = edits[("attn.o_proj", 0)].u  # columns = weight x share x scale times the cone direction
    assert u.shape[1] == 2
    assert torch.allclose(u[:, 0], 2.0 * 0.25 * rows[0][1], atol=1e-6)
    assert torch.allclose(u[:, 1], 2.0 * 0.75 * rows[1][1], atol=1e-6)


def test_warm_start_sets_fit_the_space():
    ranges = {c: {"max_weight": [0.8, 1.5], "max_weight_position": [0.6, 1.0], "min_weight": [0.0, 1.0],
                  "min_weight_distance": [0.0, 0.6]} for c in ("attn.o_proj", "mlp.down_proj")}  # fmt: skip
    settings = SearchSettings(ranges=ranges, warm_start={"full_strength": True, "use_warm_start_params": True,
                                                         "warm_start_n_trials": 2, "trials": [{"direction_index": 5.0}]})  # fmt: skip
    space = SearchSpace.resolve(settings, 12, ["attn.o_proj", "mlp.down_proj"])
    values = warm_start_values(space, settings)
    assert len(values) == 1 + 2 + 1
    dists = space.distributions()
    for preset in PRESETS:
        for name, value in preset_values(space, preset).items():
            dist = dists[name]
            assert (value in dist.choices) if hasattr(dist, "choices") else dist.low <= value <= dist.high


def test_warm_start_from_previous_study(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from bruno.search.space import previous_best
    from bruno.search.study import STUDY_NAME

    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'old.db'}", directions=["minimize"] * 2
    )
    for index, values in [(3.0, [0.2, 0.0]), (9.5, [0.05, 0.0]), (4.0, [0.01, 0.5])]:
        study.add_trial(optuna.trial.create_trial(
            params={"direction_index": index}, distributions={"direction_index": FloatDistribution(0, 10)}, values=values
        ))  # fmt: skip
    space = SearchSpace.resolve(SearchSettings(ranges={}, direction_scopes=["global"]), 11, [])
    best = previous_best(space, tmp_path / "old.db", 2)
    assert best == [
        {"direction_index": 9.0},
        {"direction_index": 4.0},
    ]  # fewest refusals, then KL; clipped into [4, 9]


def test_cone_weighting_modes_set_each_cones_edit_strength():
    from bruno.jobs.directions import cone_weights

    shares = torch.tensor([0.2, 0.5, 0.3])
    assert torch.equal(cone_weights(shares, "uniform"), torch.ones(3))
    assert torch.allclose(cone_weights(shares, "relative_share"), torch.tensor([0.4, 1.0, 0.6]))
    assert torch.equal(cone_weights(shares, "share"), shares)
    rows = torch.randn(3, 2, 4, 8)
    payload = {"directions": rows[0, 0], "cone_directions": rows, "cone_shares": shares,
               "cone_direction_weights": torch.tensor([1.0, 0.5])}  # fmt: skip
    assert [s for s, _ in DirectionSet.from_payload(payload).cones] == pytest.approx(
        [0.2, 0.5, 0.3]
    )  # old files
    payload["cone_weights"] = cone_weights(shares, "uniform")
    dset = DirectionSet.from_payload(payload)
    assert [s for s, _ in dset.cones] == [1.0, 1.0, 1.0]
    assert [w for _, w in dset.refusal_sets()] == [1.0, 0.5] * 3
