"""Evaluation of a pretrained backbone: features, kNN, linear probe, diagnostics, export."""
