"""``design.png`` shows the design with its loads, supports, compliance and a color bar."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from simdiff.design.problems import mbb_beam
from simdiff.design.render import LOAD_COLOR, SUPPORT_COLOR, density_figure, design_figure


def _pixels(image: np.ndarray, color: str) -> np.ndarray:
    """(column, row) of the pixels within a few levels of ``color``."""
    rgb = np.rint(np.asarray(to_rgb(color)) * 255)
    rows, cols = np.nonzero(np.abs(image[..., :3].astype(int) - rgb).max(-1) <= 3)
    return np.stack([cols, rows], 1)


def test_design_png_shows_loads_supports_and_a_color_bar(tmp_path):
    """Half an MBB beam (symmetry left, roller bottom right, load down top left) is drawn
    whole: the load arrow at the top middle (over the symmetry edge), pointing down, the two
    rollers at the bottom corners, below the load; a color bar right of the beam runs from
    white (void) to black (solid)."""
    problem = mbb_beam(16, 8)
    density = np.full((8, 16), 0.5)
    path = design_figure(problem, density, tmp_path / "design.png", compliance=12.5)
    image = np.asarray(Image.open(path).convert("RGB"))
    load, support = _pixels(image, LOAD_COLOR), _pixels(image, SUPPORT_COLOR)
    assert len(load) > 20 and len(support) > 20
    # The figure's legend (bottom strip) holds one sample of each: leave it out.
    beam = image.shape[0] * 0.8
    load, support = load[load[:, 1] < beam], support[support[:, 1] < beam]
    left, right = support[support[:, 0] < np.median(support[:, 0])], support[
        support[:, 0] >= np.median(support[:, 0])]
    assert abs(load[:, 0].mean() - (left[:, 0].mean() + right[:, 0].mean()) / 2) < 6
    assert right[:, 0].mean() - left[:, 0].mean() > 0.5 * image.shape[1]
    assert load[:, 1].max() < min(left[:, 1].mean(), right[:, 1].mean())
    assert abs(left[:, 1].mean() - right[:, 1].mean()) < 3
    # The arrow head (widest rows) is at its bottom end: the load points down.
    rows = np.unique(load[:, 1])
    widths = np.array([np.ptp(load[load[:, 1] == r, 0]) for r in rows])
    assert rows[np.argmax(widths)] > np.median(rows)
    # Color bar: a column right of the support markers that goes from black (top) to white.
    column = image[:, right[:, 0].max() + 10:]
    gray = (column.astype(int).max(-1) - column.astype(int).min(-1) <= 2) & (
        column.mean(-1) < 250)
    cols = np.flatnonzero(gray.sum(0) > 0.3 * image.shape[0])
    assert cols.size, "no color bar"
    bar = column[:, cols[len(cols) // 2]].mean(-1)
    lit = np.flatnonzero(gray[:, cols[len(cols) // 2]])
    assert bar[lit[0] + 2] < 60 and bar[lit[-1] - 2] > 200


def test_density_png_shows_payload_and_legs(tmp_path):
    """The design-through-simulation picture (``simdiff design robot``): red arrows over the
    loaded middle of the deck's top, pointing down; the two legs drawn in blue under the
    deck's left and right ends, below the arrows."""
    density = np.full((8, 16), 0.5)
    path = density_figure(density, tmp_path / "design.png", title="bridge",
                          loads=[(c, 0.0) for c in range(5, 12)],
                          supports=[(0, 2, 8, 12), (14, 16, 8, 12)])
    image = np.asarray(Image.open(path).convert("RGB"))
    strip = image.shape[0] * 0.85  # the legend's samples are below
    load, support = (p[p[:, 1] < strip] for p in (_pixels(image, LOAD_COLOR),
                                                  _pixels(image, SUPPORT_COLOR)))
    assert len(load) > 20 and len(support) > 20
    split = (support[:, 0].min() + support[:, 0].max()) / 2
    left, right = support[support[:, 0] < split], support[support[:, 0] >= split]
    assert np.ptp(left[:, 0]) < 0.2 * np.ptp(support[:, 0])  # two narrow legs, far apart
    middle = (left[:, 0].mean() + right[:, 0].mean()) / 2
    assert abs((load[:, 0].min() + load[:, 0].max()) / 2 - middle) < 6  # over the middle
    assert load[:, 0].min() > left[:, 0].max() and load[:, 0].max() < right[:, 0].min()
    assert load[:, 1].max() < support[:, 1].min()  # the payload on top, the legs below
    rows = np.unique(load[:, 1])
    widths = np.array([np.ptp(load[load[:, 1] == r, 0]) for r in rows])
    assert rows[np.argmax(widths)] > np.median(rows)  # heads at the bottom: pointing down
    bare = density_figure(density, tmp_path / "bare.png", title="bridge")
    assert not len(_pixels(np.asarray(Image.open(bare).convert("RGB")), LOAD_COLOR))
