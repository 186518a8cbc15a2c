"""Sweeps: one ``simdiff`` command over a grid of parameters and seeds, on local worker
processes or on Ray, resumable, with a summary table (``simdiff sweep SPEC``).

Importing this package loads none of its modules (the command line registers ``simdiff
sweep`` without them); a name is imported on first use.
"""

__all__ = ["Engine", "Run", "RunStatus", "SpecError", "SweepError", "SweepResult", "SweepSpec",
           "load_spec", "parse_spec", "run_sweep"]

_HOMES = {
    "Engine": "runner",
    "SweepError": "runner",
    "SweepResult": "runner",
    "run_sweep": "runner",
    "Run": "spec",
    "SpecError": "spec",
    "SweepSpec": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "RunStatus": "worker",
}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"simdiff.sweep.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'simdiff.sweep' has no attribute {name!r}")
