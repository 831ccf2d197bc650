"""Head factories a method declares (:class:`~unigrad.core.needs.Head`): the model section's
projector MLP, copied by the target (:data:`PROJECTOR`), and the learned predictor MLP with a
C/4 bottleneck, the online branch's alone (:data:`PREDICTOR`, BYOL / SimSiam / MoCo v3 / NNCLR).
A method with a head of its own writes its factory in its own file."""

from __future__ import annotations

from torch import nn

from unigrad.core.needs import Head, HeadContext, Needs
from unigrad.models.networks import mlp

__all__ = ["PREDICTOR", "PROJECTOR", "WITH_PREDICTOR", "predictor_mlp", "projector_mlp"]


def projector_mlp(ctx: HeadContext) -> nn.Module:
    """D -> C in ``proj_depth`` layers (hidden ``proj_hidden``, default C)."""
    return mlp(
        ctx.feat_dim, ctx.proj_hidden or ctx.proj_dim, ctx.proj_dim, ctx.proj_depth, norm=ctx.norm
    )


def predictor_mlp(ctx: HeadContext) -> nn.Module:
    """C -> C in 2 layers (hidden ``pred_hidden``, default C/4, as SimSiam)."""
    hidden = ctx.pred_hidden or max(ctx.proj_dim // 4, 1)
    return mlp(ctx.proj_dim, hidden, ctx.proj_dim, 2, norm=ctx.norm)


PROJECTOR = Head(projector_mlp, copied=True)
PREDICTOR = Head(predictor_mlp, copied=False)

#: the declaration of a method with a learned predictor (BYOL, SimSiam, MoCo v3, NNCLR)
WITH_PREDICTOR = Needs(heads={"projector": PROJECTOR, "predictor": PREDICTOR})
