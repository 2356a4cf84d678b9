"""The ``mgvsr`` command line.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. The module is imported only when its subcommand is used, so ``mgvsr --help``
stays fast (no torch import).

Errors are reported here, once for every command: an :class:`~mgvsr.errors.MgvsrError` (a bad config
key, a missing dataset root, an unreadable weights file or checkpoint, ...) becomes one line
``mgvsr CMD: error: MESSAGE`` on stderr and a non-zero exit status (2 unless the error class says
otherwise); under torchrun every rank exits that way. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mgvsr import __version__
from mgvsr.errors import MgvsrError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mgvsr.train", "train a model from a YAML config (multigrid, fixed or cycles schedule)"),
    "schedule": ("mgvsr.schedule_cli", "print a config's training schedule and its estimated cost"),
    "prepare": ("mgvsr.data.prepare", "turn video files into a training set, or pack a dataset cache"),
    "eval": ("mgvsr.evaluate", "evaluate weights on REDS4 / Vid4 / Vimeo-90K-T / any dataset"),
    "upscale": ("mgvsr.upscale", "super-resolve a video file or frame folder"),
    "export": ("mgvsr.export", "convert weights between safetensors and BasicSR .pth layouts"),
    "bench": ("mgvsr.bench", "side-by-side speed benchmark of training variants (fixed vs multigrid, or named presets)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgvsr",
        description="mgvsr: train video super-resolution models several times faster "
        "(multigrid and large-minibatch training of BasicVSR / IconVSR).",
    )
    parser.add_argument("--version", action="version", version=f"mgvsr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and the versions of key libraries")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> int:
    print(f"mgvsr {__version__}")
    try:
        import torch

        print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    except ImportError:  # pragma: no cover
        print("torch: not installed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command == "version":
        return _version()
    if command not in COMMANDS:
        parser.error(f"unknown command '{command}' (choose from version, {', '.join(COMMANDS)})")
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"mgvsr {command}", description=help_text)
    module.add_arguments(sub)
    # Intermixed: dotted overrides may come before or after flags.
    args = sub.parse_intermixed_args(rest)
    try:
        return int(module.run(args) or 0)
    except MgvsrError as err:  # bad input: one line, no traceback (other exceptions are bugs: traceback)
        print(f"mgvsr {command}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop
        print(f"\nmgvsr {command}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
