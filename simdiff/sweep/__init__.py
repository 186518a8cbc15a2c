"""Sweeps: one ``simdiff`` command over a grid of parameters and seeds, on local worker
processes or on Ray, resumable, with a summary table (``simdiff sweep SPEC``)."""

from simdiff.sweep.runner import Engine, SweepError, SweepResult, run_sweep
from simdiff.sweep.spec import Run, SpecError, SweepSpec, load_spec, parse_spec
from simdiff.sweep.worker import RunStatus

__all__ = ["Engine", "Run", "RunStatus", "SpecError", "SweepError", "SweepResult", "SweepSpec",
           "load_spec", "parse_spec", "run_sweep"]
