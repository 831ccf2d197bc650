"""The ``model`` section of the configuration: backbone, projector and predictor widths, and the
normalisation layers (built by :func:`unigrad.models.build.model_from_config`)."""

from dataclasses import dataclass

from unigrad.core.section import Section, setting
from unigrad.errors import UserError
from unigrad.models.networks import NORMS, backbone_error


@dataclass
class ModelConfig(Section):
    name = "model"

    backbone: str = setting(
        "resnet18",
        "resnet18/34/50/101 | timm:NAME (any timm model; ViTs take any view size) | vit_*; "
        "timm:NAME,key=value,... passes timm.create_model arguments (patch_size=4)",
        "arch",
        "baseline",
    )
    width: float = setting(1.0, "channel width multiplier of the ResNet", "arch", "baseline")
    cifar_stem: bool = setting(
        False, "3x3 stem without max-pool (32-px images)", "arch", "baseline"
    )
    proj_depth: int = setting(3, "projector layers (1..5)", "arch")
    proj_dim: int = setting(2048, "embedding width C (the projector's output)", "arch")
    proj_hidden: int | None = setting(None, "projector hidden width; None: proj_dim", "arch")
    pred_hidden: int | None = setting(None, "predictor hidden width; None: proj_dim / 4", "arch")
    norm: str = setting(
        "bn", "bn | gn | none: normalisation layers of backbone and MLPs", "arch", "baseline"
    )
    sync_bn: bool = setting(False, "synchronised batch norm across ranks")

    def check(self) -> None:
        if self.width <= 0:
            raise UserError("width must be > 0")
        if (problem := backbone_error(self.backbone)) is not None:  # timm names import timm
            raise UserError(problem)
        if not 1 <= self.proj_depth <= 5:
            raise UserError("proj_depth must be in 1..5")
        if self.proj_dim < 2:
            raise UserError("proj_dim must be >= 2")
        if self.norm not in NORMS:
            raise UserError(f"norm must be {', '.join(NORMS[:-1])} or {NORMS[-1]}")
