"""Every scene with a target or an observation draws it where it belongs.

Each test builds the scene at toy size, rolls its inverse problem out for a few steps, renders
the recorded frames as ``simdiff run`` does and finds the mark's exact color at the pixel its
world position projects to. MPM and fluid views are fixed (the MPM domain fills the frame, a
fluid cell is ``384 // cells`` pixels square, y up), so the projection is written down here;
N-body views fit the trajectory, so the projection is measured from two bodies' disks in the
same frame (same scale on both axes, y up).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simdiff.backend import resolve_backend
from simdiff.render.rollout import render_rollout
from simdiff.scene import load_scene, make_simulator


def _frames(name: str, **options):
    """The scene, its rollout (the design as built, float64) and the rendered frames."""
    scene = load_scene(name, **options)
    backend = resolve_backend(scene.default_backend, "cpu", "float64")
    sim = make_simulator(scene, backend)
    design = scene.design(sim).to(backend.torch_dtype)
    with torch.no_grad():
        _, result, _ = scene.objective(sim, design, record_every=1)
    return scene, result, list(render_rollout(scene, result))


def _mask(image: np.ndarray, rgb) -> np.ndarray:
    return (image == np.asarray(rgb, dtype=np.uint8)).all(axis=-1)


def _centroid(image: np.ndarray, rgb) -> np.ndarray:
    rows, cols = np.nonzero(_mask(image, rgb))
    assert rows.size, f"no pixel of color {rgb}"
    return np.array([cols.mean(), rows.mean()])


def _near(image: np.ndarray, rgb, at, radius: int = 1) -> bool:
    """Whether a pixel of color ``rgb`` lies within ``radius`` pixels of ``at`` (u, v)."""
    u, v = (int(np.rint(c)) for c in at)
    window = image[max(v - radius, 0):v + radius + 1, max(u - radius, 0):u + radius + 1]
    return bool(_mask(window, rgb).any())


# N-body --------------------------------------------------------------------------------------
def _nbody_projection(frame, a, pa, b, pb):
    """World -> pixel map from two bodies' disk colors ``a``, ``b`` at world x-y ``pa``, ``pb``."""
    ua, ub = _centroid(frame, a), _centroid(frame, b)
    scale = np.linalg.norm(ua - ub) / np.linalg.norm(np.subtract(pa, pb))
    return lambda p: ua + scale * (np.subtract(p, pa) * [1, -1])


def test_nbody_targeting_draws_the_target_point():
    """The white reticle is centered on the target (-0.6, 1.1), measured against the star at
    (0, 0) and the planet at (0, 2) in the first frame."""
    from simdiff.render.nbody import PALETTE, TARGET_RGB

    scene, _, frames = _frames("nbody_targeting", steps=5)
    target = scene.render_options["target_point"][:2]
    project = _nbody_projection(frames[0], PALETTE[0], (0, 0), PALETTE[1], (0, 2))
    expected = project(target)
    u, v = expected.round().astype(int)
    window = _mask(frames[0][v - 15:v + 16, u - 15:u + 16], TARGET_RGB)
    rows, cols = np.nonzero(window)
    assert rows.size > 20, "no reticle at the target"
    assert abs(cols.mean() - 15) <= 1.5 and abs(rows.mean() - 15) <= 1.5
    assert _near(frames[0], TARGET_RGB, expected)


def test_nbody_infer_masses_draws_the_observed_positions():
    """Each body's observed positions are crosses in its light tint at their projections
    (those clear of the disks), measured against bodies 0 and 1 in the first frame."""
    from simdiff.render.nbody import PALETTE, observed_rgb

    scene, result, frames = _frames("nbody_infer_masses", observations=3, every=100)
    x0 = result.frames[0].body_x[0, :, :2].numpy()
    project = _nbody_projection(frames[0], PALETTE[0], x0[0], PALETTE[1], x0[1])
    observed = np.asarray(scene.render_options["observed"])[..., :2]  # [K, n, 2]
    bodies = np.stack([project(p) for p in x0])
    checked = 0
    for k in range(observed.shape[0]):
        for b in range(observed.shape[1]):
            at = project(observed[k, b])
            if np.linalg.norm(bodies - at, axis=1).min() > 20:
                assert _near(frames[0], observed_rgb(b), at), (k, b)
                checked += 1
    assert checked >= 6


def test_nbody_solar_system_log_view_puts_planets_at_log_radii():
    """In the log-radius view a planet at distance r from the Sun is drawn at log10(1 + r /
    0.3) times the scale: the scale measured from the Sun and Mercury predicts where Venus
    and Earth are; each planet's label is drawn in its color."""
    from simdiff.render.nbody import PALETTE, log_radial

    scene, result, frames = _frames_plain("nbody_solar_system", planets=3, steps=4)
    x = result.frames[0].body_x[0, :, :2].numpy()
    mapped = log_radial(x, x[0], scene.render_options["log_radius"])
    project = _nbody_projection(frames[0], PALETTE[0], mapped[0], PALETTE[1], mapped[1])
    for b in (2, 3):
        assert np.linalg.norm(_centroid(frames[0], PALETTE[b]) - project(mapped[b])) < 4.0
    assert scene.render_options["labels"][:4] == ["Sun", "Mercury", "Venus", "Earth"]


def _frames_plain(name: str, **options):
    """A scene without an inverse problem, rolled out and rendered."""
    from simdiff.rollout import rollout

    scene = load_scene(name, **options)
    sim = make_simulator(scene, resolve_backend(scene.default_backend, "cpu", "float64"))
    with torch.no_grad():
        result = rollout(sim, sim.initial_state(), None, scene.steps, record_every=1)
    return scene, result, list(render_rollout(scene, result))


# Fluid ---------------------------------------------------------------------------------------
def _border_pixels(region: np.ndarray, scale: int):
    """Pixels (u, v) in the middle of each vertical border between a cell outside ``region``
    [n0, n1] and its inside neighbour along x."""
    inside = region > 0.5
    n1 = inside.shape[1]
    i, j = np.nonzero(inside[1:] != inside[:-1])  # between cells i and i + 1 along x
    return [((a + 1) * scale, (n1 - 1 - b) * scale + scale // 2) for a, b in zip(i, j)]


@pytest.mark.parametrize(
    "name, keys",
    [("fluid_smoke_to_image", ("target",)), ("fluid_stir_to_target", ("target",)),
     ("fluid_obstacle_design", ("target", "avoid"))],
)
def test_fluid_scenes_outline_their_regions(name, keys):
    """A target region is outlined in green, a region to avoid in red, on the borders between
    their cells and the others (16 cells across: 24 pixels a cell)."""
    from simdiff.render.fluid import AVOID_RGB, TARGET_RGB

    scene, _, frames = _frames(name, resolution=16, steps=2)
    colors = {"target": TARGET_RGB, "avoid": AVOID_RGB}
    scale = 384 // max(scene.model.resolution)
    for key in keys:
        borders = _border_pixels(np.asarray(scene.render_options[key]), scale)
        assert borders
        for at in borders:
            assert _near(frames[-1], colors[key], at), (key, at)


def test_fluid_plume_draws_its_target_height():
    """The plume's target height is a dashed line across the field at its height (16 cells of
    24 pixels: row 384 - height / dx * 24), and nowhere else."""
    from simdiff.render.fluid import TARGET_RGB

    scene, _, frames = _frames("fluid_plume_3d", resolution=16, steps=2)
    row = 384 - scene.render_options["target_height"] / scene.model.dx * 24
    lit = np.flatnonzero(_mask(frames[-1][:384], TARGET_RGB).sum(1) > 100)
    assert lit.size and np.abs(lit - row).max() <= 2


def test_fluid_smoke_to_image_shows_the_target_image_inset():
    """The inset (top right, a fifth of the frame, 4 pixels a cell at 16 cells) shows the
    target ring bright where the target is 1 and dark where it is 0."""
    from simdiff.render.fluid import BACKGROUND_RGB

    scene, _, frames = _frames("fluid_smoke_to_image", resolution=16, steps=2)
    goal = np.asarray(scene.render_options["target_image"])
    cell = (384 // 5) // 16
    x0 = 384 - 16 * cell - 6
    for (i, j), value in np.ndenumerate(goal):
        u, v = x0 + i * cell + cell // 2, 6 + (15 - j) * cell + cell // 2
        if v < 22:  # under the inset's caption
            continue
        pixel = frames[0][v, u].astype(int)
        if value > 0.5:
            assert pixel.mean() > 150, (i, j)
        else:
            assert np.abs(pixel - BACKGROUND_RGB).max() <= 1, (i, j)


def test_fluid_paddle_and_walls_have_their_own_colors():
    """The paddle (stir) is yellow, not a dye color; the walls of the obstacle channel are
    slate blue where solid and open at the outlets."""
    from simdiff.render.fluid import DYE_RGB, PADDLE_RGB, SOLID_RGB

    scene, result, frames = _frames("fluid_stir_to_target", resolution=16, steps=2)
    center = result.frames[0].paddle_x[0].numpy() / scene.model.dx  # in cells
    u, v = (center[0] * 24, (16 - center[1]) * 24)
    assert _near(frames[0], PADDLE_RGB, (u, v))
    assert PADDLE_RGB not in DYE_RGB

    scene, _, frames = _frames("fluid_obstacle_design", resolution=16, steps=2)
    n0, n1 = scene.model.resolution
    scale = 384 // n0
    walls = scene.model.obstacle.numpy()
    for j in range(n1):
        u, v = (n0 - 1) * scale + scale // 2, (n1 - 1 - j) * scale + scale // 2
        solid = bool(_mask(frames[0][v:v + 1, u:u + 1], SOLID_RGB).all())
        assert solid == (walls[n0 - 1, j] > 0.5), j


# MPM -----------------------------------------------------------------------------------------
def _mpm_pixel(p, domain: float, size: int = 480, bounds=None):
    """Pixel (u, v) of world points in a view of ``bounds`` (default the domain), ``size``
    pixels wide, at the same scale along y."""
    xmin, xmax, ymin, ymax = (0.0, domain, 0.0, domain) if bounds is None else bounds
    scale = size / (xmax - xmin)
    p = np.asarray(p)
    return (p[..., 0] - xmin) * scale, round((ymax - ymin) * scale) - (p[..., 1] - ymin) * scale


def test_mpm_throw_draws_the_target_point():
    """The red cross is centered on the target."""
    from simdiff.render.mpm import TARGET_RGB

    scene, _, frames = _frames("mpm_throw", steps=4)
    u, v = _mpm_pixel(scene.render_options["target_point"], scene.model.domain)
    assert _near(frames[0], TARGET_RGB, (u, v))


def test_mpm_plasticine_draws_the_target_shape():
    """Every occupied target cell clear of the particles, the tool and the ground is filled
    with the target color at its center (the lattice of nodes over the scene's box)."""
    from simdiff.render.mpm import TARGET_CELL_RGB

    scene, result, frames = _frames("mpm_plasticine", steps=2, cells=12)
    (x0, y0), (x1, y1) = scene.render_options["target_box"]
    occupied = np.asarray(scene.render_options["target_cells"]).reshape(12, 12) > 0.5
    i, j = np.nonzero(occupied)
    centers = np.stack([x0 + i * (x1 - x0) / 11, y0 + j * (y1 - y0) / 11], 1)
    particles = result.frames[0].particle_x[0].numpy()
    tool = result.frames[0].tool_x[0].numpy()
    clear = ((np.linalg.norm(centers[:, None] - particles[None], axis=-1).min(1) > 0.015)
             & (np.abs(np.linalg.norm(centers - tool, axis=1) - 0.04) > 0.01)
             & (centers[:, 1] > scene.model.ground_height + 0.01))
    assert clear.sum() >= 3
    for c in centers[clear]:
        u, v = _mpm_pixel(c, scene.model.domain)
        assert _mask(frames[0][int(v):int(v) + 1, int(u):int(u) + 1], TARGET_CELL_RGB).all(), c


@pytest.mark.parametrize(
    "name, options",
    [("mpm_identify", {"observations": 2, "every": 2}),
     ("mpm_sand_pile", {"steps": 4, "observations": 2, "grid_size": 32, "dt": 8e-4,
                        "substeps": 10})],
)
def test_mpm_scenes_draw_the_observation_nearest_in_time(name, options):
    """At each observation's time the frame shows that observation: magenta at every
    observed particle's projection (the legend's corner aside), in the scene's view (the sand
    pile's is a strip along the ground of its wide domain)."""
    from simdiff.render.mpm import OBSERVED_RGB

    scene, result, frames = _frames(name, **options)
    observed = np.asarray(scene.render_options["observed"])[:, 0]  # [K, n, 2]
    times = scene.render_options["observed_times"]
    steps = sorted(result.frames)
    for k, time in enumerate(times):
        t = int(np.rint(time / scene.model.control_dt))
        frame = frames[steps.index(t)]
        options = scene.render_options
        size = options.get("size", 480)
        u, v = _mpm_pixel(observed[k], scene.model.domain, size, options.get("bounds"))
        shown = [_near(frame, OBSERVED_RGB, (a, b)) for a, b in zip(u, v)
                 if not (b < 90 and a > size - 150)]
        assert shown and all(shown), (k, sum(shown), len(shown))


# What `simdiff run` renders for an inverse problem -------------------------------------------
def _figures(printed: str) -> dict[str, float]:
    line = next(row for row in printed.splitlines() if row.startswith("loss="))
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split())}


def test_run_renders_the_hidden_parameters_unless_given_fitted_weights(tmp_path, capsys):
    """``simdiff run`` on an inverse problem rolls out its true (hidden) parameters, which
    reproduce the observations (loss 0), and says so; with ``--weights`` it rolls out and
    names the fitted ones; a problem without hidden parameters says it shows its initial
    guess."""
    from simdiff.cli import main
    from simdiff.files import save_data
    from simdiff.sims.mpm.tasks import ModulusFit

    args = ["run", "mpm_identify"]  # 24 steps: the block bounces, so E shows
    assert main([*args, "--out", str(tmp_path / "truth")]) == 0
    printed = capsys.readouterr().out
    assert "rendering the true parameters (hidden)" in printed
    figures = _figures(printed)
    assert figures["modulus"] == pytest.approx(60.0) and figures["loss"] < 1e-8
    save_data(ModulusFit(45.0).state_dict(), tmp_path / "fit.pt")
    assert main([*args, "--weights", str(tmp_path / "fit.pt"),
                 "--out", str(tmp_path / "fit")]) == 0
    printed = capsys.readouterr().out
    assert "rendering the fitted (fit.pt)" in printed
    figures = _figures(printed)
    assert figures["modulus"] == pytest.approx(45.0) and figures["loss"] > 1e-6
    assert main(["run", "nbody_targeting", "--steps", "3", "--out", str(tmp_path / "t")]) == 0
    assert "rendering the initial guess (untrained)" in capsys.readouterr().out


def test_the_caption_is_written_after_the_title():
    """A caption changes the title line of every frame and nothing below it."""
    scene, result, plain = _frames("nbody_targeting", steps=3)
    captioned = render_rollout(scene, result, caption="true parameters (hidden)")
    for a, b in zip(plain, captioned):
        assert not np.array_equal(a[:30], b[:30])
        assert np.array_equal(a[60:], b[60:])


def test_nbody_pythagorean_frames_are_evenly_spaced_in_time_to_t70():
    """The default scene reaches t = 70, and each IAS15 step is one output interval dt (its
    own substeps adapt), so frames every ``render_every`` steps are evenly spaced in time."""
    from simdiff.rollout import rollout

    full = load_scene("nbody_pythagorean")
    assert full.steps * full.model.dt == pytest.approx(70.0)
    scene = load_scene("nbody_pythagorean", steps=8, t_end=8.0)
    sim = make_simulator(scene, resolve_backend(scene.default_backend, "cpu", "float64"))
    with torch.no_grad():
        result = rollout(sim, sim.initial_state(), None, scene.steps,
                         record_every=scene.render_every)
    times = np.array([float(result.frames[t].time[0]) for t in sorted(result.frames)])
    assert len(times) >= 4
    np.testing.assert_allclose(np.diff(times), scene.render_every * 1.0, rtol=1e-12)
    assert float(result.final.time[0]) == pytest.approx(8.0, rel=1e-12)
