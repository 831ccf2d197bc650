"""Backbones, projector and predictor heads, the Siamese model."""
