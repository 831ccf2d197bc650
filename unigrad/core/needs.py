"""What a method needs of the run, declared in the method's own file (:class:`Needs`).

A :class:`~unigrad.core.spec.MethodSpec` composes one :class:`Needs`: the heads of its network
(factories, and whether the target branch copies each), the schedules of its hyperparameters
(by step or by epoch: a function of the :class:`~unigrad.core.clock.Clock`) and the actions the
step takes after ``backward()`` and after the optimiser step. The engine reads it and nothing
else: the model is built from ``heads`` (:func:`unigrad.models.build.model_from_config`), the
objective puts each scheduled value into ``step.hp`` before the terms run, and ``build_parts``
binds the actions into ``RunParts.hooks``. No code outside ``unigrad/methods/`` asks which method
or which head it is.

The network a declaration builds is, for every view x::

    z = copied_heads(backbone(x))      # the encoder: what a momentum/snapshot target copies
    p = online_heads(z)                 # None when the method has no online-only head

Heads run in the order they are declared, copied ones first; ``z`` [N, C] (C = ``proj_dim``)
feeds the objective, ``p`` the anchors of a method with a learned predictor (BYOL's h). Module
names are the heads' names: ``encoder.projector.*`` and ``predictor.*`` for the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unigrad.core.clock import Clock
from unigrad.core.hooks import Action

__all__ = [
    "Head",
    "HeadContext",
    "HookContext",
    "Needs",
    "Schedule",
    "cosine",
    "freeze_before_epoch",
    "linear_by_epoch",
]


@dataclass(frozen=True)
class HeadContext:
    """What a head factory sees: the widths of the run's ``model`` section and the method's
    checked hyperparameters (``hp``, :meth:`~unigrad.core.spec.MethodSpec.resolve`).

    ``feat_dim``: the backbone's output width D; ``proj_dim``: the embedding width C the
    objective gets (the last copied head must output it); ``proj_hidden`` / ``pred_hidden``:
    None means the model section's default (C, and C/4 for a predictor).
    """

    feat_dim: int
    proj_dim: int
    proj_depth: int = 3
    proj_hidden: int | None = None
    pred_hidden: int | None = None
    norm: str = "bn"
    hp: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Head:
    """One head of the network: ``build(ctx)`` returns the module; ``copied``: it belongs to
    the encoder, so a momentum or snapshot target copies it (a projector, DINO's head), else it
    is the online branch's alone (a predictor)."""

    build: Callable[[HeadContext], nn.Module]
    copied: bool = True


@dataclass(frozen=True)
class HookContext:
    """What an action factory (:attr:`Needs.after_backward`, :attr:`Needs.after_optimizer_step`)
    is bound to once the run's parts exist: the online ``model``
    (:class:`~unigrad.models.networks.SiameseModel`), the ``target`` branch, the ``objective``
    (its ``parts`` hold the terms' modules) and the checked hyperparameters ``hp``."""

    model: nn.Module
    target: nn.Module
    objective: nn.Module
    hp: Mapping[str, Any]


#: a schedule: the value of one hyperparameter at a clock, from the checked base values (hp)
Schedule = Callable[[Clock, Mapping[str, Any]], Any]
#: an action factory: binds an action (called with the step's Clock) to the run's parts
Bind = Callable[[HookContext], Action]


def _default_heads() -> dict[str, Head]:
    from unigrad.models.heads import PROJECTOR  # models know nothing of core; late import

    return {"projector": PROJECTOR}


@dataclass(frozen=True)
class Needs:
    """A method's declaration of what it needs of the run (see the module docstring).

    Args:
        heads: name -> :class:`Head`, in the order they run (default: the model section's
            projector MLP alone, :data:`unigrad.models.heads.PROJECTOR`).
        schedules: hyperparameter name -> :data:`Schedule`; the objective replaces
            ``step.hp[name]`` by its value at the step's clock (a 0-d tensor under
            ``compile: step``: write it with operations that take both, as the helpers here).
        after_backward / after_optimizer_step: action factories (:data:`Bind`) whose actions
            the step calls at those points, in this order, after the run's own (e.g. the
            averaging of the loss parts' gradients across ranks). An action must use tensor
            operations only and never read a tensor into Python (``unigrad.core.hooks``).
    """

    heads: Mapping[str, Head] = field(default_factory=_default_heads)
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    after_backward: tuple[Bind, ...] = ()
    after_optimizer_step: tuple[Bind, ...] = ()

    @property
    def online_heads(self) -> tuple[str, ...]:
        """Names of the heads the target does not copy (their output is ``p``)."""
        return tuple(k for k, h in self.heads.items() if not h.copied)

    @property
    def has_predictor(self) -> bool:
        """Whether the anchors are an online-only head's outputs ``p`` (BYOL's h(z))."""
        return bool(self.online_heads)

    def scheduled(self, hp: dict[str, Any], clock: Clock) -> dict[str, Any]:
        """``hp`` with every scheduled value at ``clock`` (``hp`` itself when none is)."""
        if not self.schedules:
            return hp
        return {**hp, **{k: fn(clock, hp) for k, fn in self.schedules.items()}}

    def describe(self) -> str:
        """The heads, e.g. ``projector, predictor (online)``."""
        return ", ".join(k + ("" if h.copied else " (online)") for k, h in self.heads.items())


# ----------------------------------------------------------------------------- helpers
def _value(v: str | float, hp: Mapping[str, Any]) -> Any:
    return hp[v] if isinstance(v, str) else v


def _clamp01(x: Any) -> Any:
    return x.clamp(0.0, 1.0) if isinstance(x, torch.Tensor) else min(max(x, 0.0), 1.0)


def linear_by_epoch(start: str | float, end: str | float, epochs: str | float) -> Schedule:
    """Linear from ``start`` at epoch 0 to ``end`` at epoch ``epochs - 1``, then ``end`` (the
    value is constant within an epoch: DINO's teacher-temperature warm-up). Each argument is a
    number or the name of a hyperparameter."""

    def schedule(clock: Clock, hp: Mapping[str, Any]) -> Any:
        a, b, n = (_value(v, hp) for v in (start, end, epochs))
        frac = _clamp01(clock.epoch / max(float(n) - 1.0, 1.0))
        return a + (b - a) * frac

    return schedule


def cosine(start: str | float, end: str | float) -> Schedule:
    """Per step, cosine from ``start`` (step 0) to ``end`` (the end of the run), as DINO's
    weight-decay and momentum schedules: end - (end - start) (cos(pi t / T) + 1) / 2."""

    def schedule(clock: Clock, hp: Mapping[str, Any]) -> Any:
        a, b = _value(start, hp), _value(end, hp)
        t = clock.progress
        cos = torch.cos(math.pi * t) if isinstance(t, torch.Tensor) else math.cos(math.pi * t)
        return b - (b - a) * (cos + 1) / 2

    return schedule


def freeze_before_epoch(
    params: Callable[[HookContext], Iterable[nn.Parameter]], epochs: str | float
) -> Bind:
    """An after-backward action factory: the gradients of ``params(ctx)`` are zeroed during
    the first ``epochs`` epochs (a number or a hyperparameter's name): SwAV's frozen prototypes,
    DINO's last layer. Zeroed, not removed (``grad = None`` cannot be written as a tensor
    operation): an optimiser with momentum or weight decay still moves them."""

    def bind(ctx: HookContext) -> Action:
        ps = [p for p in params(ctx) if p.requires_grad]
        n = _value(epochs, ctx.hp)

        def action(clock: Clock) -> None:
            keep = clock.epoch >= n
            for p in ps:
                if p.grad is not None:
                    p.grad.mul_(keep)

        return action

    return bind
