"""The `hemoseg` command. Each subcommand lives in its own module exposing
`register(subparsers)`; the module list below is the whole command surface."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hemoseg import RESEARCH_NOTICE, __version__
from hemoseg.errors import HemosegError

COMMANDS = ["synth", "data", "train", "evaluate", "compare", "predict", "score", "export", "serve"]


class OneLineParser(argparse.ArgumentParser):
    """A bad flag gets one line naming the problem, not the whole usage block;
    subcommand parsers inherit this class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hemoseg",
        description="Segment and measure intracranial hemorrhage on head CT. " + RESEARCH_NOTICE,
    )
    parser.add_argument("--version", action="version", version=f"hemoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"hemoseg.cli.{name}_cmd").register(sub)
    return parser


# Commands whose process ends once its files are written and closed. Tearing the
# interpreter down after `predict` (freeing ~800 modules' objects, highdicom's parsed
# tables of the DICOM standard among them) took 0.6-0.9 s of every run on 2 cores.
SKIP_TEARDOWN = {"predict"}


def entry() -> None:
    """The `hemoseg` executable (and `python -m hemoseg`): main(), then exit.

    main() stays an ordinary function for tests and embedding; only a process that
    was started for a SKIP_TEARDOWN command leaves through os._exit, after flushing."""
    code = main()
    if next((a for a in sys.argv[1:] if not a.startswith("-")), None) in SKIP_TEARDOWN:
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to say
                pass
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as given, for relaunching
    try:
        return int(args.func(args) or 0)
    except HemosegError as exc:
        print(f"hemoseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `hemoseg data stats ... | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("hemoseg: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("hemoseg: error: out of memory", file=sys.stderr)
        return 2
    except Exception as exc:  # last resort: one line, full trace only on request
        if os.environ.get("HEMOSEG_DEBUG"):
            raise
        print(f"hemoseg: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set HEMOSEG_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3
