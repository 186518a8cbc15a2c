"""The ``rl eval`` Pareto plot: unfinished systems left out and counted, labels legible, the
policy told apart from the rule."""

from __future__ import annotations

import numpy as np

from simdiff.rl.evaluate import RULE_NAME, MethodResult, pareto_figure, write_pareto_plot


def _result(name: str, evaluations: float, error: float, unfinished: int = 0) -> MethodResult:
    """Eight systems near (evaluations, error); the last ``unfinished`` stopped at the cap
    with an error of 1e3, far above every finished one."""
    rng = np.random.default_rng(len(name))
    evals = evaluations * np.exp(0.1 * rng.normal(size=8))
    errors = error * np.exp(0.1 * rng.normal(size=8))
    finished = np.arange(8) < 8 - unfinished
    errors[~finished] = 1e3
    return MethodResult(name, errors, evals, finished, np.zeros(8))


def test_pareto_plot_leaves_out_unfinished_systems_and_tells_policy_from_rule(tmp_path):
    """No plotted point is an unfinished system's (the y axis stays far below 1e3), the
    legend counts them per method, the policy is a star and the rule a diamond in different
    colors, and every fixed eta is labeled at its median."""
    results = [_result(f"fixed eta={eta}", 1e3 / eta, eta**2) for eta in (0.01, 0.02, 0.05)]
    results[2] = _result("fixed eta=0.05", 2e4, 2.5e-3, unfinished=2)
    results += [_result(RULE_NAME, 6e4, 1e-4), _result("policy", 5e4, 5e-5, unfinished=1)]
    figure = pareto_figure(results)
    (ax,) = figure.axes
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert points[:, 1].max() < 1.0 and ax.get_ylim()[1] < 1.0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("fixed eta" in t and "2 unfinished left out" in t for t in legend)
    assert any(t.startswith("policy") and "1 unfinished left out" in t for t in legend)
    assert any(t.startswith("error-feedback rule") and "unfinished" not in t for t in legend)
    handles = dict(zip(legend, ax.get_legend().legend_handles))
    policy = next(h for t, h in handles.items() if t.startswith("policy"))
    rule = next(h for t, h in handles.items() if t.startswith("error-feedback"))
    assert not np.allclose(policy.get_facecolor()[0], rule.get_facecolor()[0])
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["eta 0.01", "eta 0.02", "eta 0.05"]
    assert all(t.get_fontsize() >= 8 for t in ax.texts)
    path = write_pareto_plot(results, tmp_path / "pareto.png")
    assert path.stat().st_size > 1000
