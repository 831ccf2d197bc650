"""The error of the core: an invalid or inapplicable hyperparameter or combination of parts."""

from __future__ import annotations


class HyperparameterError(ValueError):
    """An invalid or inapplicable hyperparameter; the message names the key."""
