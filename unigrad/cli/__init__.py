"""``unigrad`` command line: one sub-command per task, user mistakes reported without traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable

from unigrad.errors import UserError

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``fn(parser)`` that adds the sub-command's arguments and sets ``func``."""

    def deco(fn: Callable[[argparse.ArgumentParser], None]) -> Callable:
        COMMANDS[name] = (help, fn)  # type: ignore[assignment]
        return fn

    return deco


@command("methods", "list the methods, their forms, targets and default hyperparameters")
def _methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--dim", type=int, default=2048, help="embedding width C for the balance factors"
    )

    def run(a: argparse.Namespace) -> int:
        from unigrad.experiments.rows import row_label
        from unigrad.methods import METHODS

        if a.json:
            print(json.dumps([spec.to_dict(a.dim) for spec in METHODS.values()], indent=2))
            return 0
        print(
            f"{'method':<13} {'form':<5} {'row':<8} {'target':<9} {'norm':<5} {'set':<6} "
            f"{'lambda@' + str(a.dim):<11} {'positive':<24} negative"
        )
        for spec in METHODS.values():
            for f in spec.all_forms():
                row = row_label(f, spec)
                print(
                    f"{spec.name:<13} {f.kind:<5} {row:<8} {spec.target:<9} {f.norm:<5} "
                    f"{f.sample_set:<6} {f.balance_text(a.dim):<11} {f.pos_grad:<24} {f.neg_grad}"
                )
            hp = ", ".join(
                f"{k}={p.default}" for k, p in spec.params.items() if p.default is not None
            )
            extra = ", ".join(f"{k}={v}" for k, v in spec.train_defaults.items())
            print(
                f"{'':<13} default form: {spec.default_form}; heads: {spec.needs.describe()}"
                + (f"; {hp}" if hp else "")
                + (f"; {extra}" if extra else "")
            )
        print(
            "\n* default gradient variant. Balance factors marked as scaling follow the width: "
            "table value x C / 2048."
        )
        return 0

    p.set_defaults(func=run)


@command(
    "check-gradients", "verify the paper's appendix A: autograd of each loss vs its closed form"
)
def _check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--seed", type=int, default=0)

    def run(a: argparse.Namespace) -> int:
        from unigrad.experiments.derivations import format_table, run_checks

        checks = run_checks(seed=a.seed)
        if a.json:
            print(json.dumps([c.to_json() for c in checks], indent=2))
        else:
            print(format_table(checks))
        bad = [c.name for c in checks if not c.ok]
        if bad:
            print(f"FAILED exact identities: {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(__path__):  # each module registers its own commands
        importlib.import_module(f"{__name__}.{m.name}")

    parser = argparse.ArgumentParser(
        prog="unigrad",
        description="Siamese self-supervised learning in loss form and unified gradient form.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, fn) in COMMANDS.items():  # type: ignore[misc]
        fn(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """End the process group that a command run under torchrun set up, here, where the
    command's objects are released (see :func:`unigrad.core.dist.cleanup`: ended later, at
    interpreter exit, a gloo thread can abort the process). An error on its way out still holds
    the trainer in its frames; their locals are cleared first (the traceback keeps its lines)."""
    dist = sys.modules.get("unigrad.core.dist")  # imported by the commands that train
    if dist is None or not dist.is_dist():
        return
    error = sys.exc_info()[1]
    if error is not None:
        traceback.clear_frames(error.__traceback__)
    dist.cleanup()
