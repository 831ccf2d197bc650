"""Datasets, augmentation (per-image and batched) and the training data pipeline."""
