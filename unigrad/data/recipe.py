"""The augmentation recipe: :class:`AugmentSpec` (the config's augmentation keys) and the
:class:`ViewSpec` of each view it asks for; torch-free, so the config can check it cheaply.

The op probabilities (``jitter_p``, ``gray_p``, ``blur_p``, ``solarize_p``) are one number for
every view or a list with one per global view: BYOL's asymmetric recipe (Grill et al. 2020,
Table 6) is ``blur_p=[1.0, 0.1]``, ``solarize_p=[0.0, 0.2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, make_dataclass
from typing import Any, get_type_hints

from unigrad.core.section import Section, setting
from unigrad.errors import UserError

#: The op probabilities that may be given per view (AugmentSpec / Config keys).
PROB_KEYS = ("jitter_p", "gray_p", "blur_p", "solarize_p")
#: The recipe's fixed ranges: crop aspect ratio (w / h), blur sigma, solarize threshold.
ASPECT = (3 / 4, 4 / 3)
SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 0.5


@dataclass(frozen=True)
class ViewSpec:
    """One view: output side in pixels, the crop's area fraction range, and the probabilities
    of colour jitter, grayscale, blur and solarize for this view."""

    size: int
    scale: tuple[float, float]
    jitter_p: float
    gray_p: float
    blur_p: float
    solarize_p: float


def parse_multi_crop(text: str) -> list[tuple[int, int]]:
    """``"2x32,6x16"`` -> [(2, 32), (6, 16)]: (count, size) of the global, then local views."""
    groups = []
    for part in text.replace(" ", "").split(","):
        count, sep, size = part.partition("x")
        if not (sep and count.isdigit() and size.isdigit() and int(count) and int(size)):
            groups = []
            break
        groups.append((int(count), int(size)))
    if not 1 <= len(groups) <= 2 or groups[0][0] < 2:
        raise UserError(
            f"multi_crop must look like '2x224,6x96' (global views x size, then local views x "
            f"size; at least 2 global views), got {text!r}"
        )
    return groups


def view_probabilities(key: str, value: Any, n_global: int, pairs: bool = False) -> Any:
    """Check one op probability: a number in [0, 1] (every view) or a list of them, one per
    global view (``pairs``: 4 global views as asym2x's two pairs also take 2 values, one per
    view of a pair). Returns the value, a list as a tuple of floats; a mistake raises
    :class:`UserError` naming the key."""
    example = f"{key}: 0.5 for every view, or {key}: [1.0, 0.1] for 2 global views"
    listed = isinstance(value, Sequence) and not isinstance(value, str)
    if listed:
        values = tuple(value)
        allowed = (n_global, 2) if pairs and n_global == 4 else (n_global,)
        if len(values) not in allowed:
            raise UserError(
                f"{key} has {len(values)} values but there are {n_global} global views; give "
                f"one number for every view or {' or '.join(map(str, allowed))} values, one per "
                f"global view ({example})"
            )
    else:
        values = (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise UserError(
                f"{key} must be a probability in [0, 1] or a list of them, one per global view "
                f"({example}); got {value!r}"
            )
    return tuple(float(v) for v in values) if listed else value


@dataclass(frozen=True)
class AugmentSpec:
    """The augmentation recipe; field names are the config keys (``n_global``: 4 for asym2x).

    ``jitter_p``, ``gray_p``, ``blur_p``, ``solarize_p``: one probability for every view, or a
    list with one per global view (BYOL: ``blur_p=[1.0, 0.1]``, ``solarize_p=[0.0, 0.2]``).
    Local (multi-crop) views take the list's last value; asym2x's 4 global views (pairs 0-1 and
    2-3) take 2 values, repeated for each pair, or 4.
    """

    image_size: int = 224
    crop_scale_min: float = 0.2
    crop_scale_max: float = 1.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float | tuple[float, ...] = 0.8
    gray_p: float | tuple[float, ...] = 0.2
    blur_p: float | tuple[float, ...] = 0.5
    solarize_p: float | tuple[float, ...] = 0.0
    multi_crop: str = ""
    local_scale_min: float = 0.05
    local_scale_max: float = 0.4
    n_global: int = 2

    def __post_init__(self) -> None:
        for key in PROB_KEYS:
            value = getattr(self, key)
            if isinstance(value, Sequence) and not isinstance(value, str):
                n, pairs = self.global_views(), not self.multi_crop
                object.__setattr__(self, key, view_probabilities(key, value, n, pairs))
            else:
                view_probabilities(key, value, 1)

    def global_views(self) -> int:
        """The number of global views (multi-crop's first group, else ``n_global``)."""
        return parse_multi_crop(self.multi_crop)[0][0] if self.multi_crop else self.n_global

    def probability(self, key: str, view: int) -> float:
        """``key``'s probability for view ``view`` (global views first, then local)."""
        value = getattr(self, key)
        if not isinstance(value, tuple):
            return value
        n = self.global_views()
        if view >= n:
            return value[-1]
        return value[view % len(value)]  # asym2x with 2 values: the same for each pair

    @classmethod
    def from_config(cls, cfg: Any) -> AugmentSpec:
        """From a :class:`unigrad.config.Config` (or any object with these attributes)."""
        kw = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        if getattr(cfg, "symmetry", "sym") == "asym2x":
            kw["n_global"] = 4
        return cls(**kw)

    def views(self) -> list[ViewSpec]:
        """Global views first, then local ones."""
        global_scale = (self.crop_scale_min, self.crop_scale_max)
        local_scale = (self.local_scale_min, self.local_scale_max)
        groups = parse_multi_crop(self.multi_crop) if self.multi_crop else []
        sizes = [(self.image_size, global_scale)] * self.n_global
        if groups:
            sizes = [(groups[0][1], global_scale)] * groups[0][0]
            if len(groups) == 2:
                sizes += [(groups[1][1], local_scale)] * groups[1][0]
        return [
            ViewSpec(size, scale, **{k: self.probability(k, i) for k in PROB_KEYS})
            for i, (size, scale) in enumerate(sizes)
        ]

    def jitter_ranges(self) -> list[tuple[float, float]]:
        """(low, high) of the brightness, contrast, saturation, hue factors (torchvision's)."""
        b, c, s = self.brightness, self.contrast, self.saturation
        return [(max(0.0, 1 - f), 1 + f) for f in (b, c, s)] + [(-self.hue, self.hue)]


_AUGMENT_DOCS = {
    "image_size": "global views' side in px; None: from the data (its side, 224 for large ones)",
    "crop_scale_min": "random resized crop: smallest area fraction of a global view",
    "crop_scale_max": "random resized crop: largest area fraction of a global view",
    "brightness": "colour jitter strength", "contrast": "colour jitter strength",
    "saturation": "colour jitter strength", "hue": "colour jitter strength (hue shift)",
    "jitter_p": "probability of colour jitter: one number or one per global view",
    "gray_p": "probability of grayscale: one number or one per global view",
    "blur_p": "probability of blur (BYOL's views: [1.0, 0.1])",
    "solarize_p": "probability of solarize (BYOL's views: [0.0, 0.2])",
    "multi_crop": "e.g. '2x32,6x16': global views x size, local views x size; '': two views",
    "local_scale_min": "area fraction range of a local (multi-crop) view",
    "local_scale_max": "area fraction range of a local (multi-crop) view",
}  # fmt: skip


def _check_augment(self: Any) -> None:
    """The recipe's ranges, and :class:`AugmentSpec`'s own checks (probabilities, multi_crop)."""
    if self.image_size is not None and self.image_size < 8:
        raise UserError(f"image_size must be >= 8 (or null: from the data), got {self.image_size}")
    if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
        raise UserError("need 0 < crop_scale_min <= crop_scale_max <= 1")
    if not 0 < self.local_scale_min <= self.local_scale_max <= 1:
        raise UserError("need 0 < local_scale_min <= local_scale_max <= 1")
    AugmentSpec.from_config(self)


def _augment_fields() -> list[tuple[str, Any, Any]]:
    """:class:`AugmentSpec`'s fields as config keys (``n_global`` follows ``symmetry``), with
    ``image_size`` None (from the data) and the probabilities typed loosely (one or a list)."""
    hints = get_type_hints(AugmentSpec)
    out: list[tuple[str, Any, Any]] = []
    for f in fields(AugmentSpec):
        if f.name == "n_global":
            continue
        doc = _AUGMENT_DOCS[f.name]
        if f.name == "image_size":
            out.append((f.name, int | None, setting(None, doc, "baseline")))
        else:
            out.append(
                (f.name, Any if f.name in PROB_KEYS else hints[f.name], setting(f.default, doc))
            )
    out.append(("cutmix", bool, setting(False, "CutMix the online views (momentum target)")))
    return out


#: The ``augment`` section of the configuration: :class:`AugmentSpec`'s keys and ``cutmix``.
AugmentConfig = make_dataclass(
    "AugmentConfig",
    _augment_fields(),
    bases=(Section,),
    namespace={"name": "augment", "check": _check_augment, "__module__": __name__},
)
