"""GradInitConfig: validation, defaults, the reference recipe, loading saved configs."""

from __future__ import annotations

import pytest

from hf_gradinit import GradInitConfig


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=-1e-3), "eta must be a positive"),
        (dict(scale_lr=0.0), "scale_lr must be a positive"),
        (dict(min_scale=2.0, max_scale=1.0), "min_scale .* must not exceed max_scale"),
        (dict(iterations=0), "iterations must be an integer >= 1"),
        (dict(inner_optimizer="lamb"), "inner_optimizer must be 'adam' or 'sgd'"),
        (dict(overlap=1.5), "overlap must be in"),
        (dict(gamma=-3.0), "gamma must be positive"),
        (dict(gamma_unit="relative"), "gamma_unit must be"),
        (dict(probe_steps=-1), "probe_steps must be an integer >= 0"),
        (dict(probe_margin=1.0), r"probe_margin must be in \[0, 1\)"),
        (dict(hvp="central_difference"), "hvp must be"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradInitConfig(**kwargs)


def test_defaults_and_the_reference_recipe():
    config = GradInitConfig()
    assert (config.iterations, config.scale_lr, config.gamma) == (200, 2.5e-3, None)
    assert (config.probe_steps, config.probe_margin) == (300, 0.0)
    assert config.fixed_embeddings is True and config.hvp == "forward_difference"
    assert config.norm_type == "l1" and GradInitConfig(inner_optimizer="sgd").norm_type == "l2"
    reference = GradInitConfig.reference(5e-4)
    assert reference.eta == pytest.approx(1e-3)  # 2x the training learning rate
    assert (reference.iterations, reference.gamma, reference.gamma_unit) == (
        780,
        2.5e-5,
        "per_parameter",
    )
    assert reference.probe_steps == 0 and reference.fixed_embeddings is False
    assert GradInitConfig.reference(5e-4, iterations=5).iterations == 5


def test_to_dict_round_trips():
    config = GradInitConfig(scale_betas=[0.5, 0.6], probe_steps=3, gamma=1.0)
    assert config.scale_betas == (0.5, 0.6)  # lists (JSON, YAML) become tuples
    assert GradInitConfig.from_dict(config.to_dict()) == config


def test_saved_configs_of_earlier_versions_still_load():
    legacy = {**GradInitConfig().to_dict(), "separate_constraint_moments": True}
    assert GradInitConfig.from_dict(legacy) == GradInitConfig()
    # the tied_embeddings modes and the trial guard were removed; central differences are
    # read as the nearest method still there
    removed = {
        **GradInitConfig().to_dict(),
        "tied_embeddings": "fixed",
        "trial_steps": 50,
        "trial_lr": 5e-4,
        "trial_betas": [0.9, 0.98],
        "hvp": "central_difference",
    }
    assert GradInitConfig.from_dict(removed) == GradInitConfig()
    with pytest.raises(ValueError, match="Unknown GradInitConfig fields"):
        GradInitConfig.from_dict({"not_a_field": 1})
