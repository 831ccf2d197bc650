"""unigrad: Siamese self-supervised learning in loss form and unified gradient form."""

from unigrad.core.objective import Objective
from unigrad.methods import METHODS, get_method

__all__ = ["METHODS", "Objective", "get_method"]
__version__ = "0.2.0"
