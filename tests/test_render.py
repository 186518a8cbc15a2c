"""Tests of simdiff.render: frames show what the trajectory says, videos and plots read back."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest

from simdiff.render import plot_loss, plot_series, render_mass_spring, write_video
from simdiff.render import plots as plots_module
from simdiff.render.mass_spring import (
    CONTRACT_RGB,
    EXTEND_RGB,
    GROUND_RGB,
    PASSIVE_RGB,
    SHADOW_RGB,
    SKY_RGB,
    spring_colors,
)


def _square(x0: float, y0: float, side: float) -> tuple[np.ndarray, np.ndarray]:
    """A braced square: 4 particles, 4 edges and 2 diagonals."""
    positions = np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])
    springs = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
    return positions, springs


def _cube(center: tuple[float, float, float], side: float) -> tuple[np.ndarray, np.ndarray]:
    """A cube's 8 corners and its 12 edges."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    edges = [
        (a, b)
        for a in range(8)
        for b in range(a + 1, 8)
        if np.abs(corners[a] - corners[b]).sum() == 1
    ]
    return np.asarray(center) + side * (corners - 0.5), np.array(edges)


def _mask(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (image == np.asarray(rgb, dtype=np.uint8)).all(axis=-1)


def _count(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(_mask(image, rgb).sum())


def _horizon_row(image: np.ndarray) -> int:
    """The first dark row of the leftmost column (no robot there): the horizon line."""
    dark = image[:, 0].astype(int).sum(axis=1) < 3 * 120
    assert dark.any(), "no horizon line"
    return int(np.argmax(dark))


def test_2d_ground_band_lies_below_the_ground_line_only():
    """With bounds [0,1]x[0,1] on 100x100 pixels, ground y=0.25 is pixel row 75: below it (past
    the tick marks) every pixel is ground but for the ticks' numbers, which sit under the
    numbered ticks at x = 0, 0.5 and 1 only; above it no pixel is ground, and the sky is
    untouched away from the robot."""
    positions, springs = _square(0.4, 0.5, 0.2)
    (frame,) = render_mass_spring(
        positions, springs, ground_height=0.25, size=(100, 100), bounds=(0, 1, 0, 1), follow=False
    )
    assert frame.shape == (100, 100, 3) and frame.dtype == np.uint8
    band = _mask(frame[90:], GROUND_RGB)
    text_columns = np.flatnonzero(~band.all(axis=0))
    assert text_columns.size and _count(frame[90:], SKY_RGB) == 0
    assert all(min(abs(c - 0), abs(c - 50), abs(c - 100)) <= 10 for c in text_columns)
    assert band[:, 12:40].all() and band[:, 60:88].all()
    assert _count(frame[:73], GROUND_RGB) == 0
    assert _count(frame[:25], SKY_RGB) == 25 * 100  # the robot spans rows 30..50
    horizon = frame[74:77, 20:30].reshape(-1, 3).astype(int)
    assert (horizon.sum(axis=1) < 3 * 120).any(), "no dark horizon line near row 75"


def test_2d_follow_keeps_the_robot_still_and_moves_the_ticks():
    """A robot sliding at constant speed: the following camera shows it at the same pixels in
    consecutive frames while the ground ticks (fixed in the world) shift."""
    base, springs = _square(0.0, 0.1, 0.2)
    trajectory = np.stack([base + [0.013 * t, 0.0] for t in range(31)])
    frames = render_mass_spring(trajectory, springs, size=(200, 120), follow=True)
    ground_row = _horizon_row(frames[15])
    robot_a, robot_b = frames[15][: ground_row - 2], frames[16][: ground_row - 2]
    ground_a, ground_b = frames[15][ground_row:], frames[16][ground_row:]
    assert np.array_equal(robot_a, robot_b)
    assert not np.array_equal(ground_a, ground_b)


def test_2d_view_without_follow_contains_the_whole_trajectory():
    """With follow=False a robot that travels far is drawn at different pixels at the start and
    the end, and both frames still contain it."""
    base, springs = _square(0.0, 0.1, 0.2)
    trajectory = np.stack([base + [0.1 * t, 0.0] for t in range(21)])
    first, last = render_mass_spring(trajectory[[0, -1]], springs, follow=False)

    def columns_with_robot(image: np.ndarray) -> np.ndarray:
        above_ground = image[: _horizon_row(image) - 1]
        return np.flatnonzero((above_ground != np.asarray(SKY_RGB)).any(axis=(0, 2)))

    assert columns_with_robot(first).size and columns_with_robot(last).size
    assert columns_with_robot(first).max() < columns_with_robot(last).min()


@pytest.mark.parametrize("value, expected", [(1.0, EXTEND_RGB), (-1.0, CONTRACT_RGB)])
def test_2d_actuated_spring_color_at_its_location(value, expected):
    """One horizontal spring across the middle: at +1 its pixels are the extension red, at -1
    the contraction blue, and passive (NaN) grey; the color bar top right (rows above 40)
    shows both ends, and a passive robot has none."""
    positions = np.array([[0.2, 0.5], [0.8, 0.5]])
    springs = np.array([[0, 1]])
    kwargs = {"ground_height": None, "size": (200, 200), "bounds": (0, 1, 0, 1), "follow": False}
    (frame,) = render_mass_spring(positions, springs, actuation=np.array([[value]]), **kwargs)
    window = frame[95:106, 90:111]  # around the midpoint, away from the particle dots
    assert _count(window, expected) >= 10
    other = CONTRACT_RGB if value > 0 else EXTEND_RGB
    assert _count(frame[40:], other) == 0
    legend = frame[:40]
    assert _count(legend, CONTRACT_RGB) > 0 and _count(legend, EXTEND_RGB) > 0
    (passive,) = render_mass_spring(positions, springs, actuation=np.array([[np.nan]]), **kwargs)
    assert _count(passive[95:106, 90:111], PASSIVE_RGB) >= 10
    assert _count(passive, CONTRACT_RGB) == _count(passive, EXTEND_RGB) == 0
    assert _count(passive, expected) == 0


def test_spring_colors_interpolate_through_grey():
    """-1, 0, NaN and +1 map to the end colors and grey; +0.5 lies halfway to red."""
    colors = spring_colors(np.array([-1.0, 0.0, np.nan, 1.0, 0.5, 7.0]))
    assert colors.dtype == np.uint8 and colors.shape == (6, 3)
    assert colors[0].tolist() == list(CONTRACT_RGB)
    assert colors[1].tolist() == colors[2].tolist() == list(PASSIVE_RGB)
    assert colors[3].tolist() == colors[5].tolist() == list(EXTEND_RGB)
    halfway = (np.asarray(PASSIVE_RGB) + np.asarray(EXTEND_RGB)) / 2
    assert np.abs(colors[4] - halfway).max() <= 1


def test_3d_frames_have_the_size_and_show_the_robot_at_the_center():
    """A 3D cube lifted above the ground and moving far: frames have the requested size, the
    camera follows the cube (non-background pixels around the image center in every frame), a
    shadow appears on the ground, and without ground neither ground nor shadow is drawn."""
    positions, springs = _cube((0.5, 0.3, 0.2), 0.2)
    trajectory = np.stack([positions + [2.0 * t, 0.0, 1.0 * t] for t in range(3)])
    frames = render_mass_spring(trajectory, springs, size=(160, 120), title="step 3")
    assert len(frames) == 3
    for frame in frames:
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
        center = frame[45:75, 60:100].reshape(-1, 3)
        background = (center == np.asarray(SKY_RGB)).all(axis=1) | (
            center == np.asarray(GROUND_RGB)
        ).all(axis=1)
        assert (~background).sum() >= 20
        assert _count(frame, SHADOW_RGB) > 0
    (bare,) = render_mass_spring(positions, springs, ground_height=None, size=(160, 120))
    assert _count(bare, GROUND_RGB) == 0 and _count(bare, SHADOW_RGB) == 0
    assert _count(bare[45:75, 60:100], SKY_RGB) < 30 * 40


def test_3d_nearer_spring_is_drawn_over_farther_one():
    """A far blue spring and a near red one that cross on screen: where both would cover a pixel
    alone, the combined frame shows red, whatever order the springs are listed in."""
    positions = np.array(
        [[0.0, -0.2, -0.3], [0.0, 1.0, -0.3], [-0.4, 0.6, 0.3], [0.4, 0.6, 0.3]], dtype=float
    )
    far, near = np.array([0, 1]), np.array([2, 3])
    kwargs = {"ground_height": None, "size": (200, 200)}

    def render(springs: list[np.ndarray], actuation: list[float]) -> np.ndarray:
        (frame,) = render_mass_spring(
            positions, np.stack(springs), actuation=np.array([actuation]), **kwargs
        )
        return frame

    blue_alone = _mask(render([far], [-1.0]), CONTRACT_RGB)
    red_alone = _mask(render([near], [1.0]), EXTEND_RGB)
    crossing = blue_alone & red_alone
    assert crossing.sum() > 0, "test geometry: the springs should cross on screen"
    far_first = render([far, near], [-1.0, 1.0])
    near_first = render([near, far], [1.0, -1.0])
    assert np.array_equal(far_first, near_first)
    assert _mask(far_first, EXTEND_RGB)[crossing].all()


def test_render_validates_its_inputs():
    """Shapes and indices are checked and the error names the parameter."""
    positions, springs = _square(0.0, 0.1, 0.2)
    with pytest.raises(ValueError, match="springs"):
        render_mass_spring(positions, springs + 10)
    with pytest.raises(ValueError, match="positions"):
        render_mass_spring(np.zeros((2, 4, 4)), springs)
    with pytest.raises(ValueError, match="actuation"):
        render_mass_spring(positions, springs, actuation=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="positions"):
        render_mass_spring(np.full((4, 2), np.nan), springs)


def _colored_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """Distinct frames (GIF merges identical consecutive ones): a bar moving over a gradient."""
    frames = []
    for i in range(count):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
        frame[:, (i * 3) % width : (i * 3) % width + 3] = (0, 255, 0)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_write_video_reads_back_with_the_same_frame_count(tmp_path, suffix):
    """Odd-sized frames are written (into a new folder) and read back with the same count; the
    mp4 is padded to even sizes."""
    frames = _colored_frames(7, 21, 33)
    path = write_video(frames, tmp_path / "new" / f"clip{suffix}", fps=10)
    assert path.exists() and path.suffix == suffix
    reader = imageio.get_reader(path)
    read = [np.asarray(frame) for frame in reader]
    reader.close()
    assert len(read) == len(frames)
    expected = (21, 33) if suffix == ".gif" else (22, 34)
    assert read[0].shape[:2] == expected
    # Lossy codecs, but the red gradient and the green bar must survive.
    first = read[0][:21, :33, :3].astype(int)
    assert np.abs(first - frames[0].astype(int)).mean() < 12


def test_write_video_rejects_bad_arguments(tmp_path):
    """An unknown suffix names the parameter and the allowed values; no frames is an error."""
    frames = _colored_frames(2, 16, 16)
    with pytest.raises(ValueError, match=r"path.*\.mp4.*\.gif"):
        write_video(frames, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="frames"):
        write_video([], tmp_path / "clip.gif")
    with pytest.raises(ValueError, match="frames"):
        write_video([frames[0].astype(np.float32)], tmp_path / "clip.gif")
    assert not list(tmp_path.iterdir())


def test_plot_loss_writes_a_png(tmp_path):
    """The PNG reads back at the figure's 640x400 pixels and is not blank."""
    metrics = [{"iteration": i, "loss": 1.0 / (1 + i)} for i in range(20)]
    path = plot_loss(metrics, tmp_path / "plots" / "loss.png", title="run")
    image = imageio.imread(path)
    assert image.shape[:2] == (400, 640)
    assert image[..., :3].std() > 10


@pytest.mark.parametrize(
    "values, logy",
    [
        ([1.0, 1e-1, 1e-3], True),  # positive, three decades
        ([1.0, 0.5, 0.02], False),  # positive, under two decades
        ([1.0, -1e-3, 1e-4], False),  # a negative value
        ([1.0, 0.0, 1e-4], False),  # a zero
    ],
)
def test_plot_loss_uses_log_scale_only_for_positive_values_over_two_decades(
    tmp_path, monkeypatch, values, logy
):
    """plot_loss hands plot_series logy=True exactly when the rule holds."""
    seen = {}

    def fake_plot_series(x, ys, path, **kwargs):
        seen.update(x=list(x), ys=ys, **kwargs)
        return path

    monkeypatch.setattr(plots_module, "plot_series", fake_plot_series)
    metrics = [{"iteration": 10 * i, "score": v} for i, v in enumerate(values)]
    plot_loss(metrics, tmp_path / "p.png", key="score")
    assert seen["logy"] is logy
    assert seen["x"] == [0, 10, 20] and list(seen["ys"]["score"]) == values


def test_plot_loss_and_series_validate(tmp_path):
    """A missing key and mismatched series lengths raise errors that name the culprit."""
    with pytest.raises(ValueError, match="'loss'"):
        plot_loss([{"iteration": 0, "reward": 1.0}], tmp_path / "p.png")
    with pytest.raises(ValueError, match="'b'"):
        plot_series([0, 1], {"a": [1, 2], "b": [1]}, tmp_path / "p.png", xlabel="x", ylabel="y")
    path = plot_series(
        [0, 1, 2], {"a": [1, 2, 3], "b": [3, 2, 1]}, tmp_path / "s.png", xlabel="x", ylabel="y"
    )
    assert imageio.imread(path).shape[:2] == (400, 640)


def test_batched_frames_draw_the_chosen_world():
    """Frames [T, B, n, dim] draw one world: world 1 (red, moved right) gives the frame its own
    [T, n, dim] trajectory gives, and differs from world 0 (blue), below the color bar (rows
    under 28); a world out of range is refused, naming it."""
    left, springs = _square(0.1, 0.1, 0.2)
    right, _ = _square(0.5, 0.1, 0.2)
    positions = np.stack([left, right])[None]  # [T=1, B=2, 4, 2]
    actuation = np.array([[[-1.0] * 6, [1.0] * 6]])  # [T=1, B=2, m]
    kwargs = {"size": (120, 80), "bounds": (0.0, 1.0, 0.0, 0.5), "follow": False}
    (world1,) = render_mass_spring(positions, springs, actuation=actuation, world=1, **kwargs)
    (alone,) = render_mass_spring(right, springs, actuation=np.ones((1, 6)), **kwargs)
    (world0,) = render_mass_spring(positions, springs, actuation=actuation, **kwargs)
    assert np.array_equal(world1, alone)
    world1, world0 = world1[28:], world0[28:]
    assert _count(world1, EXTEND_RGB) > 0 and _count(world1, CONTRACT_RGB) == 0
    assert _count(world0, CONTRACT_RGB) > 0 and _count(world0, EXTEND_RGB) == 0
    with pytest.raises(ValueError, match="world=2: positions holds 2 worlds"):
        render_mass_spring(positions, springs, world=2)
