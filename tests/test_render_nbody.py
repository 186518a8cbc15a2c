"""N-body frames: bodies sized by mass, fading trails, the view keeps every body."""

import numpy as np
import pytest

from simdiff.render.nbody import BACKGROUND_RGB, render_nbody


def _bright(frame):
    return np.abs(frame.astype(int) - np.array(BACKGROUND_RGB)).sum(-1) > 60


def test_heavier_body_is_drawn_larger_and_everything_stays_in_view():
    t = np.linspace(0, 2 * np.pi, 30)
    heavy = np.stack([np.cos(t), np.sin(t), 0 * t], 1)
    positions = np.stack([heavy, -heavy], 1)  # [T, 2, 3]
    frames = render_nbody(positions, np.array([1.0, 1e-3]), size=(320, 240), trail=0)
    assert len(frames) == 30 and frames[0].shape == (240, 320, 3)
    mask = _bright(frames[0])
    _, xs = np.nonzero(mask)
    assert len(xs) > 0
    left, right = mask[:, :160].sum(), mask[:, 160:].sum()
    assert right > 3 * left  # body 0 (heavy) starts at +x, body 1 (light) at -x


def test_trail_fades_behind_a_moving_body():
    x = np.linspace(-1, 1, 40)
    # A second, static body off the path; the view spans x in [-1.15, 1.15] over 400 pixels.
    positions = np.stack([np.stack([x, 0 * x], 1), np.stack([0 * x, 0 * x + 0.5], 1)], 1)
    frame = render_nbody(positions, np.array([1.0, 1.0]), size=(400, 300), trail=40)[-1]
    brightness = np.abs(frame.astype(int) - np.array(BACKGROUND_RGB)).sum(-1)
    scale = 400 / 2.3  # pixels per unit; the view is centered on (0, 0.25)
    row = brightness[int(150 + 0.25 * scale)]  # the row of y = 0, the moving body's path
    old, new = row[int(200 - 0.6 * scale)], row[int(200 + 0.6 * scale)]
    assert 0 < old < new


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="positions has shape"):
        render_nbody(np.zeros((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="masses must be 2 positive"):
        render_nbody(np.zeros((3, 2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="subtitles has 1 entries for 3 frames"):
        render_nbody(np.zeros((3, 2, 2)) + np.arange(2)[None, :, None], np.ones(2), subtitles=["a"])


def test_many_bodies_render_quickly_as_dots():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(5, 5000, 3))
    frames = render_nbody(positions, np.ones(5000))
    assert _bright(frames[0]).sum() > 1000
