"""The ``rvos-batch`` command: one subcommand per module in this package, each with ``--help``.

argparse lives here only; each subcommand module builds a frozen config and calls library code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rvos_batch import __version__
from rvos_batch.errors import RvosBatchError

# subcommand -> (module under rvos_batch.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("ingest", "build a corpus (frames/ and prompts/) from DAVIS, YouTube-VOS, frame folders or video files"),
    "label": ("label", "label a corpus with RVOS on Ray: sharded, resumable, exactly once"),
    "status": ("status", "show the progress of a labeling run in OUT"),
    "export": ("export", "write a mask store as DAVIS palette PNGs"),
    "show": ("show", "draw a contact sheet of one video with its masks overlaid"),
    "synth": ("synth", "write a synthetic DAVIS-layout dataset with real object silhouettes and motion"),
    "train": ("train", "train RVOS on a DAVIS or YouTube-VOS layout folder"),
    "eval": ("eval", "score predictions against ground truth with the DAVIS-2017 protocols"),
}


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for HEIGHTxWIDTH options such as ``--input-size 240x424``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x448, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvos-batch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rvos-batch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"rvos_batch.cli.{module_name}")
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.configure_parser(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except RvosBatchError as e:
        print(f"rvos-batch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rvos-batch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
