"""The gradient check's judgement on losses whose truth is known: a right gradient passes, a
wrong one is a mismatch, and a loss with a kink is "non-smooth here", never a mismatch."""

import math
from types import SimpleNamespace

import pytest

from simdiff.gradcheck import Verdict, directional_check


def _check(f, autodiff, step=1e-3):
    return directional_check("x", f, autodiff, step, rtol=1e-6, atol=1e-12)


def test_a_right_gradient_of_a_smooth_loss_is_ok_at_the_first_step():
    r = _check(lambda t: math.sin(0.3 + t), math.cos(0.3))
    assert r.verdict is Verdict.OK and len(r.steps) == 1


def test_a_right_gradient_is_ok_once_the_step_is_below_the_curvature():
    """A step too large for the tolerance: refined, it agrees (not a mismatch)."""
    r = _check(lambda t: math.exp(40 * (0.1 + t)), 40 * math.exp(4.0), step=1e-2)
    assert r.verdict is Verdict.OK and len(r.steps) > 1 and "agrees at h=" in r.evidence


def test_a_kink_inside_the_first_step_only_is_ok():
    # A kink at t = 2e-4: inside the first step (1e-3), outside the finer ones.
    r = _check(lambda t: t + 2 * max(t - 2e-4, 0.0), 1.0)
    assert r.verdict is Verdict.OK


@pytest.mark.parametrize("wrong", [1.01, 0.0, -1.0])
def test_a_wrong_gradient_is_a_mismatch_with_the_converged_value(wrong):
    f = lambda t: math.sin(0.3 + t) + (0.3 + t) ** 2
    truth = math.cos(0.3) + 0.6
    r = _check(f, wrong * truth if wrong else 0.0)
    assert r.verdict is Verdict.MISMATCH and not r.ok
    assert r.finite_difference == pytest.approx(truth, rel=1e-9)
    assert "settle on" in r.evidence


def test_a_kink_at_the_point_is_non_smooth_with_the_one_sided_slopes():
    """relu(t) * 2 + t at 0: slopes 1 (left) and 3 (right); autodiff takes one side (1),
    central differences converge to 2. Not a wrong gradient: a point of no derivative."""
    r = _check(lambda t: 2 * max(t, 0.0) + t, 1.0)
    assert r.verdict is Verdict.NON_SMOOTH and not r.ok
    assert "a kink at this point" in r.evidence
    assert "3.000000e+00 (forward)" in r.evidence and "1.000000e+00 (backward)" in r.evidence


def test_dense_kinks_that_never_settle_are_non_smooth_not_a_mismatch():
    """Kinks every 2.9e-6, finer than the smallest step (1.6e-5): the differences average
    ever fewer of them as the step shrinks and move apart instead of settling."""
    x0 = 0.3

    def f(t):
        return (x0 + t) + 1e-7 * abs(math.sin(1.1e6 * (x0 + t)))

    local = 1 + 1e-7 * 1.1e6 * math.cos(1.1e6 * x0) * math.copysign(1, math.sin(1.1e6 * x0))
    r = _check(f, local)
    assert r.verdict is Verdict.NON_SMOOTH, r.evidence
    assert "do not settle" in r.evidence


def _sawtooth_kinks(down):
    """x plus a small triangle wave with kinks every 1e-5, at a point midway between two:
    steps above the spacing see the wave's mean slope (0), steps below it the local one."""
    period, amplitude = 2e-5, 1e-6
    x0 = period * (15000 + 0.25)

    def f(t):
        u = (x0 + t) / period
        return (x0 + t) + amplitude * abs(u - round(u))

    return directional_check("x", f, 1 + amplitude / period, 1e-3, rtol=1e-6, atol=1e-12,
                             down=down)


def test_kinks_averaging_out_at_large_steps_are_no_mismatch():
    """The differences settle on 1.0 at steps far above the kinks' spacing, then move again
    near it: not a limit, so never a mismatch; steps below the spacing find autodiff's 1.05
    (the scenes' check goes four steps down, to the first / 256)."""
    coarse = _sawtooth_kinks(down=2)
    assert coarse.verdict is Verdict.NON_SMOOTH, coarse.evidence
    fine = _sawtooth_kinks(down=4)
    assert fine.verdict is Verdict.OK and "agrees at h=3.9e-06" in fine.evidence, fine.evidence


def _scene_backends():
    """(scene, backend) pairs, read from the scene files without building a scene (this runs
    at collection, in the default suite too)."""
    from simdiff.catalog import read_scene
    from simdiff.gradcheck import backends_for
    from simdiff.scene import list_scenes, scene_dir

    pairs = []
    for name in list_scenes():
        info = read_scene(scene_dir() / f"{name}.py")
        pairs += [(name, b) for b in backends_for(SimpleNamespace(simulator=info.simulator))]
    return pairs


def _gradient_check_note(scene: str) -> str:
    """The scene docstring's paragraph starting "Gradient check:" (empty when it has none)."""
    import importlib.util

    from simdiff.scene import scene_dir

    spec = importlib.util.spec_from_file_location("scene_doc", scene_dir() / f"{scene}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paragraphs = (module.__doc__ or "").split("\n\n")
    return next((" ".join(p.split()) for p in paragraphs if p.startswith("Gradient check:")), "")


@pytest.mark.slow  # every shipped scene at its defaults, both backends: long on 2 shared cores
@pytest.mark.parametrize("scene, backend", _scene_backends())
def test_every_shipped_scene_passes_gradcheck_at_its_defaults(scene, backend, capsys):
    """No mismatch at the command's defaults on each of the scene's backends. A quantity may
    be "non-smooth here" only where the scene's docstring (a paragraph starting "Gradient
    check:") names it (in backquotes) and says why; a backend on which a scene cannot be
    checked is named there ("cannot be checked on taichi") and skipped."""
    from simdiff.cli import main

    note = _gradient_check_note(scene)
    if f"cannot be checked on {backend}" in note.lower():
        pytest.skip(note)
    code = main(["gradcheck", scene, "--backend", backend, "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MISMATCH" not in out
    rough = [line.split()[1] for line in out.splitlines() if line.endswith("non-smooth here")]
    unexplained = [q for q in rough if f"`{q}`" not in note or "non-smooth here" not in note]
    assert not unexplained, f"non-smooth without a reason in the docstring: {unexplained}\n{out}"


def test_round_off_at_a_tiny_first_step_is_not_a_mismatch():
    """Noise of 1e-12 in the loss (a long rollout's round-off) swamps a 1e-9 step; the larger
    steps of the ladder see through it."""
    import random

    def f(t):
        return math.sin(0.3 + t) + 1e-12 * random.Random(t).uniform(-1, 1)

    r = directional_check("x", f, math.cos(0.3), 1e-9, rtol=1e-4, atol=1e-9)
    assert r.verdict is Verdict.OK and "agrees at h=1.6e-08" in r.evidence, r.evidence


def test_batched_worlds_pass_against_central_differences():
    """Three slightly different walkers with their own actions: every checked quantity
    (holding all worlds) matches float64 central differences."""
    from simdiff.gradcheck import check_gradients
    from simdiff.scene import load_scene

    results = check_gradients(load_scene("walker_small"), "warp", steps=15, batch=3)
    assert {r.quantity for r in results} >= {"initial_particle_x", "actions"}
    assert all(r.verdict is Verdict.OK for r in results), [
        (r.quantity, r.autodiff, r.finite_difference) for r in results if not r.ok]
