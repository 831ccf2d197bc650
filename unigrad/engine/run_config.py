"""The ``run`` section of the configuration: device, precision, seed and what the run writes
(output folder, logging and checkpoint periods)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from unigrad.core.section import Section, setting
from unigrad.errors import UserError

#: ``compile`` values: no compilation, the online network only, the whole step, or measured.
COMPILE_MODES = ("off", "model", "step", "auto")


def compile_mode(value: object) -> str:
    """``compile`` as one of :data:`COMPILE_MODES` (``true``/``false`` of configs written
    before the modes existed read as ``model``/``off``)."""
    text = str(value).lower() if value is not None else "off"
    return {"true": "model", "false": "off", "none": "off"}.get(text, text)


#: torch.compile's backend for ``compile: step`` and the fast pipeline's compiled augmentation
#: (tests and debugging: ``aot_eager`` captures the same graphs without generating code).
BACKEND_ENV = "UNIGRAD_COMPILE_BACKEND"


def compile_backend() -> str:
    """``$UNIGRAD_COMPILE_BACKEND``, else ``inductor``."""
    return os.environ.get(BACKEND_ENV, "inductor")


@dataclass
class RunConfig(Section):
    name = "run"

    device: str = setting("auto", "auto | cpu | cuda", "untrained")
    amp: str = setting(
        "auto",
        "auto | off | bf16 | fp16 (auto: bf16 on GPUs with it, else fp16; measured on CPUs)",
        "untrained",
    )
    amp_resolved: str | None = setting(
        None, "written by the run: fp32 | bf16 | fp16 (kept on resume)", "untrained"
    )
    amp_measured: str | None = setting(None, "written by the run: amp auto's timings", "untrained")
    channels_last: bool = setting(True, "channels-last memory format", "untrained")
    compile: str = setting(
        "off",
        "off | model (the online network) | step (the whole step, unigrad.engine.compiled) | "
        "auto (step where measured faster); true/false of older configs read as model/off",
        "untrained",
    )
    compile_resolved: str | None = setting(
        None, "written by the run: the step compile auto chose or a fallback took", "untrained"
    )
    seed: int = setting(0, "seed of every random draw (a function of seed and step)", "arch",
                        "baseline")  # fmt: skip
    deterministic: bool = setting(False, "deterministic kernels (bit-identical resume)")
    out: str = setting("runs/unnamed", "the run directory", "untrained")
    log_every: int = setting(10, "steps between metric logs", "untrained")
    ckpt_every: int = setting(
        0, "steps between mid-epoch checkpoints (0: end of epoch only)", "untrained"
    )
    keep_epoch_ckpts: bool = setting(False, "keep epoch-NNNN.ckpt files", "untrained")
    tensorboard: bool = setting(True, "also log to RUN/tb (needs tensorboard)", "untrained")
    wandb: bool = setting(
        False, "also log to Weights & Biases (needs unigrad[wandb]; --resume continues the "
        "same W&B run, its id kept in the checkpoints)", "untrained"
    )  # fmt: skip
    wandb_project: str = setting("unigrad", "the W&B project", "untrained")
    wandb_name: str | None = setting(None, "the W&B run name (default: the run directory's)",
                                     "untrained")  # fmt: skip

    def check(self) -> None:
        if compile_mode(self.compile) not in COMPILE_MODES:
            modes = ", ".join(COMPILE_MODES)
            raise UserError(f"compile must be one of {modes}, got {self.compile}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise UserError("amp must be auto, off, bf16 or fp16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError("device must be auto, cpu or cuda")
        if self.amp_resolved not in (None, "fp32", "bf16", "fp16"):
            raise UserError(
                "amp_resolved (written by the run) must be fp32, bf16 or fp16; remove it"
            )
        if self.log_every < 1:
            raise UserError(f"log_every must be >= 1, got {self.log_every}")
        if self.ckpt_every < 0:
            raise UserError(
                f"ckpt_every must be >= 0 (0: end of epoch only), got {self.ckpt_every}"
            )
