"""Experiments: grids of runs (``unigrad compare``), reports, the appendix-A derivations."""
