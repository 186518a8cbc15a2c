"""Headless rendering of rollouts: frames, videos and metric plots.

Everything here reads trajectories and metrics as plain numpy arrays and dicts, never a
simulator, and needs neither a window nor a GPU: frames are rasterized with Pillow, videos
written with imageio (ffmpeg for ``.mp4``, Pillow for ``.gif``), plots drawn with matplotlib's
Agg renderer.
"""

from simdiff.render.fluid import render_fluid
from simdiff.render.mass_spring import render_mass_spring
from simdiff.render.mpm import render_mpm
from simdiff.render.nbody import plot_energy_error, render_nbody
from simdiff.render.plots import plot_loss, plot_series
from simdiff.render.video import write_video

__all__ = [
    "plot_energy_error",
    "plot_loss",
    "plot_series",
    "render_fluid",
    "render_mass_spring",
    "render_mpm",
    "render_nbody",
    "write_video",
]
