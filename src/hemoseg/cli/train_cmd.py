"""`hemoseg train` (not yet implemented)."""

from hemoseg.errors import HemosegError


def register(sub):
    p = sub.add_parser("train", help="(not yet implemented)")
    p.set_defaults(func=_run)


def _run(args):
    raise HemosegError("'train' is not implemented yet")
