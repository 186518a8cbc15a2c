"""Headless rendering: frames of rollouts, mp4 and gif videos, plots. Reads trajectories
(numpy arrays), never simulators; needs no window and no GPU."""

from simdiff.render.mass_spring import render_mass_spring
from simdiff.render.plots import plot_loss, plot_series
from simdiff.render.video import write_video

__all__ = ["plot_loss", "plot_series", "render_mass_spring", "write_video"]
