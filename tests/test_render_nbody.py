"""Tests of simdiff.render.nbody: frames show what the trajectory says; the energy plot reads back.

Bodies are found by their exact palette color: disks are filled with it, while trails are blends
toward the background and never match it exactly.
"""

from __future__ import annotations

import time

import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from simdiff.render import plot_energy_error, render_nbody
from simdiff.render.nbody import (
    BACKGROUND_RGB,
    CLOUD_RGB,
    ENERGY_ERROR_FLOOR,
    PALETTE,
    TEXT_RGB,
    body_radii,
)


def _mask(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (frame == np.asarray(rgb, dtype=np.uint8)).all(axis=-1)


def _distance_from_background(frame: np.ndarray) -> np.ndarray:
    return np.abs(frame.astype(int) - np.asarray(BACKGROUND_RGB)).sum(axis=-1)


def _centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """(column, row) center of the pixels of one exact color."""
    rows, cols = np.nonzero(_mask(frame, rgb))
    assert rows.size, f"no pixel of color {rgb}"
    return np.array([cols.mean(), rows.mean()])


def test_heavy_body_is_drawn_with_a_larger_disk():
    """A star of mass 1 at upper left and a planet of mass 1e-3 at lower right (y points up):
    the star's disk covers about pi r^2 pixels at the frame's largest radius (12 px at 640x480),
    the planet's at least the 2-pixel floor and far fewer pixels than the star's."""
    positions = np.array([[[-1.0, 0.5], [1.0, -0.5]]])
    masses = np.array([1.0, 1e-3])
    frame = render_nbody(positions, masses, trail=0)[0]
    assert (_centroid(frame, PALETTE[0]) < _centroid(frame, PALETTE[1])).all()
    star, planet = _mask(frame, PALETTE[0]).sum(), _mask(frame, PALETTE[1]).sum()
    radii = body_radii(masses, 12.0)
    assert radii[0] == 12.0 and radii[1] == 2.0
    assert abs(star - np.pi * 12.0**2) < 0.15 * np.pi * 12.0**2
    assert 4 <= planet < star / 10


def test_trail_lies_behind_a_body_moving_along_x_and_fades():
    """A body moves from x = -1 to x = 1 along y = 0 in 40 frames; with bounds
    [-1.5, 1.5] x [-1, 1] on 300x200 pixels (100 px per unit, y = 0 on row 100) the last frame
    shows, left of the body, a trail whose color is ever closer to the background the older it
    is (sampled every 40 px), and nothing right of the body."""
    x = np.linspace(-1.0, 1.0, 40)
    positions = np.stack([x, np.zeros_like(x)], axis=1)[:, None, :]
    frame = render_nbody(
        positions, np.ones(1), trail=40, size=(300, 200), bounds=(-1.5, 1.5, -1.0, 1.0)
    )[-1]
    row = _distance_from_background(frame)[100]
    assert _centroid(frame, PALETTE[0]) == pytest.approx([250, 100], abs=1.0)
    samples = row[[60, 100, 140, 180, 220]]  # oldest (x = -0.9) to newest (x = 0.7)
    assert samples[0] > 0
    assert np.all(np.diff(samples) > 0), samples
    assert (row[262:] == 0).all()
    # The trail is a blend of the background toward the body's color, not another color.
    newest = frame[100, 220].astype(float) - BACKGROUND_RGB
    direction = np.asarray(PALETTE[0], dtype=float) - BACKGROUND_RGB
    cosine = newest @ direction / np.linalg.norm(newest) / np.linalg.norm(direction)
    assert cosine > 0.99


@pytest.mark.parametrize("size", [(640, 480), (96, 64)])
def test_default_view_keeps_every_body_whole_in_every_frame(size):
    """Three bodies flying apart toward different corners: with the default view every frame
    shows each body's whole disk (no pixel clipped by the border, even on a tiny frame where the
    disks are larger than the margin), and the view is fitted, the disks spanning most of the
    frame's width or height over the trajectory."""
    width, height = size
    s = np.linspace(0.0, 1.0, 25)[:, None]
    start = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    end = np.array([[10.0, 3.0], [-5.0, -8.0], [2.0, 9.0]])
    positions = start + s[:, :, None] * (end - start)
    masses = np.array([1.0, 0.3, 0.01])
    frames = render_nbody(positions, masses, size=size)
    # The largest radius is min(size) / 40 px, but at least 4.
    areas = np.pi * body_radii(masses, max(4.0, height / 40)) ** 2
    columns, rows = [], []
    for frame in frames:
        for b in range(3):
            mask = _mask(frame, PALETTE[b])
            assert mask.sum() > 0.7 * areas[b]
            r, c = np.nonzero(mask)
            assert r.min() > 0 and c.min() > 0 and r.max() < height - 1 and c.max() < width - 1
            rows += [r.min(), r.max()]
            columns += [c.min(), c.max()]
    spans = (max(columns) - min(columns)) / width, (max(rows) - min(rows)) / height
    assert max(spans) > 0.8


def test_follow_keeps_the_center_of_mass_at_the_image_center():
    """A binary of masses 3:1 orbiting while drifting by 20 separations: with ``follow`` the
    mass-weighted mean of the disk centers stays within a pixel of the image center in every
    frame; without it, it moves."""
    t = np.linspace(0.0, 4 * np.pi, 30)
    masses = np.array([3.0, 1.0])
    ring = np.stack([np.cos(t), np.sin(t)], axis=1)
    drift = np.stack([20.0 * t / t[-1], 5.0 * t / t[-1]], axis=1)
    positions = drift[:, None, :] + np.stack([-0.25 * ring, 0.75 * ring], axis=1)

    def com_pixels(frames):
        return np.array(
            [
                (masses[0] * _centroid(f, PALETTE[0]) + masses[1] * _centroid(f, PALETTE[1]))
                / masses.sum()
                for f in frames
            ]
        )

    followed = com_pixels(render_nbody(positions, masses, follow=True, trail=0, size=(320, 240)))
    assert np.abs(followed - [160, 120]).max() < 1.0
    fixed = com_pixels(render_nbody(positions, masses, trail=0, size=(320, 240)))
    assert np.ptp(fixed[:, 0]) > 100


def test_frames_have_the_requested_size_and_show_title_subtitles_and_labels():
    """Frames are [H, W, 3] uint8 at ``size``; the title puts text-colored pixels in the top-left
    corner, each frame's own subtitle changes the rows under it, and a label changes the pixels
    up and to the right of its body."""
    positions = np.zeros((3, 1, 2))
    kwargs = {"size": (200, 120), "bounds": (-1.0, 1.0, -0.6, 0.6)}
    plain = render_nbody(positions, np.ones(1), **kwargs)
    frames = render_nbody(
        positions,
        np.ones(1),
        title="three body",
        subtitles=["t = 0.00", "t = 1.00", "t = 22.5, dE/E = 3e-9"],
        labels=["Sun"],
        **kwargs,
    )
    assert len(frames) == 3
    assert all(f.shape == (120, 200, 3) and f.dtype == np.uint8 for f in frames)
    # At this height the title is 10 px from row 6, the subtitle 9 px from row 22.
    text = frames[0][4:20, :60].astype(float) - BACKGROUND_RGB
    direction = np.asarray(TEXT_RGB, dtype=float) - BACKGROUND_RGB
    assert (text @ direction / (direction @ direction) > 0.8).sum() > 10
    assert np.array_equal(frames[0][:20], frames[1][:20])
    assert not np.array_equal(frames[0][20:34], frames[1][20:34])
    assert not np.array_equal(frames[1][20:34], frames[2][20:34])
    # The body is at pixel (100, 60) with radius 4; its label starts at its upper right.
    assert not np.array_equal(frames[0][45:60, 104:130], plain[0][45:60, 104:130])


def test_3d_input_is_drawn_from_above():
    """3D positions are projected onto x-y: separated bodies look exactly as their x-y
    positions do, and where two overlap, the one with the larger z is drawn on top."""
    rng = np.random.default_rng(1)
    positions = np.stack(
        [np.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]) + 0.05 * rng.normal(size=(3, 2))] * 10
    )
    depth = rng.normal(size=(10, 3, 1))
    masses = np.array([1.0, 2.0, 3.0])
    flat = render_nbody(positions, masses, size=(160, 120))
    tall = render_nbody(np.concatenate([positions, depth], axis=2), masses, size=(160, 120))
    assert all(np.array_equal(a, b) for a, b in zip(flat, tall))

    same_place = np.zeros((1, 2, 3))
    same_place[0, :, 0] = [0.0, 0.01]
    for top, z in ((0, [1.0, 0.0]), (1, [0.0, 1.0])):
        same_place[0, :, 2] = z
        frame = render_nbody(same_place, np.ones(2), size=(160, 120), bounds=(-1, 1, -1, 1))[0]
        assert _mask(frame[60:61, 80:81], PALETTE[top]).all()


def test_many_bodies_render_fast_as_dots():
    """5,000 bodies x 20 frames render in well under a few seconds (a generous bound, for slow
    CI machines: it takes about 0.05 s), as single-color dots: lit pixels are blends of the
    background toward ``CLOUD_RGB``, one per body except where bodies share a pixel."""
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(20, 5000, 3))
    start = time.perf_counter()
    frames = render_nbody(positions, np.ones(5000), title="cloud", scale_bar=False)
    assert time.perf_counter() - start < 2.0
    assert len(frames) == 20
    lit = _distance_from_background(frames[5][40:]) > 0  # below the title
    assert 3000 < lit.sum() <= 5000
    pixels = frames[5][40:][lit].astype(float) - BACKGROUND_RGB
    direction = np.asarray(CLOUD_RGB, dtype=float) - BACKGROUND_RGB
    along = pixels @ direction / (direction @ direction)
    assert np.abs(pixels - along[:, None] * direction).max() < 1.5
    assert along.min() > 0.5


def test_a_cluster_view_ignores_a_few_escapers():
    """5,000 bodies in a unit Gaussian cloud and 10 escapers 1,000 units away: the default view
    still fits the cloud, 98% of whose x and y positions lie within +-2.33 units, so its
    bodies' lit pixels spread over most of the frame's height."""
    rng = np.random.default_rng(2)
    positions = rng.normal(size=(2, 5010, 2))
    positions[:, 5000:] += 1000.0
    frame = render_nbody(positions, np.ones(5010))[1]
    rows, _ = np.nonzero(_distance_from_background(frame))
    assert rows.size > 3000
    assert np.ptp(rows) > 0.8 * 480


@pytest.mark.parametrize(
    "name, positions, masses, options",
    [
        ("positions", np.zeros((3, 2)), np.ones(2), {}),
        ("positions", np.zeros((3, 2, 4)), np.ones(2), {}),
        ("positions", np.full((3, 2, 2), np.nan), np.ones(2), {}),
        ("masses", np.zeros((3, 2, 2)), np.ones(3), {}),
        ("masses", np.zeros((3, 2, 2)), np.array([1.0, 0.0]), {}),
        ("masses", np.zeros((3, 2, 2)), np.array([1.0, -2.0]), {}),
        ("labels", np.zeros((3, 2, 2)), np.ones(2), {"labels": ["a"]}),
        ("subtitles", np.zeros((3, 2, 2)), np.ones(2), {"subtitles": ["a"]}),
        ("trail", np.zeros((3, 2, 2)), np.ones(2), {"trail": -1}),
        ("size", np.zeros((3, 2, 2)), np.ones(2), {"size": (8, 8)}),
        ("bounds", np.zeros((3, 2, 2)), np.ones(2), {"bounds": (1.0, 0.0, 0.0, 1.0)}),
    ],
)
def test_bad_inputs_raise_errors_naming_the_parameter(name, positions, masses, options):
    with pytest.raises(ValueError, match=f"^{name}:"):
        render_nbody(positions, masses, **options)


def test_energy_error_plot_has_a_log_axis_and_shows_zeros(tmp_path, monkeypatch):
    """Two runs sampled at different times, one starting at an exact zero and one negative:
    the PNG reads back at 640x400 and is not blank; the plotted axis is logarithmic, the zero
    sits at the floor and the negative errors are plotted as their absolute values."""
    saved = []
    original = matplotlib.figure.Figure.savefig

    def spy(figure, *args, **kwargs):
        saved.append(figure)
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    times = {"dt = 1e-2": np.linspace(0, 1, 101), "dt = 1e-1": np.linspace(0, 1, 11)}
    errors = {
        "dt = 1e-2": np.r_[0.0, np.geomspace(1e-12, 1e-9, 100)],
        "dt = 1e-1": -np.geomspace(1e-7, 1e-5, 11),
    }
    path = plot_energy_error(times, errors, tmp_path / "plots" / "energy.png", title="drift")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (400, 640, 3) and image.std() > 10
    (axes,) = saved[0].axes
    assert axes.get_yscale() == "log"
    fine, coarse = axes.get_lines()
    assert fine.get_ydata()[0] == ENERGY_ERROR_FLOOR
    np.testing.assert_allclose(coarse.get_ydata(), np.geomspace(1e-7, 1e-5, 11))
    assert axes.get_ylim()[0] > 0


def test_energy_error_plot_validates(tmp_path):
    """A shared time sequence of the wrong length, or a run missing from the times, raises."""
    with pytest.raises(ValueError, match=r"^errors\['b'\]:"):
        plot_energy_error([0, 1, 2], {"a": [0, 1, 2], "b": [0, 1]}, tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"^times:.*'b'"):
        plot_energy_error({"a": [0, 1]}, {"a": [0, 1], "b": [0, 1]}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="^errors:"):
        plot_energy_error([0, 1], {}, tmp_path / "e.png")
    path = plot_energy_error([0.0, 1.0, 2.0], {"run": [0.0, 0.0, 0.0]}, tmp_path / "e.png")
    assert path.exists()
