"""`hemoseg data` (not yet implemented)."""

from hemoseg.errors import HemosegError


def register(sub):
    p = sub.add_parser("data", help="(not yet implemented)")
    p.set_defaults(func=_run)


def _run(args):
    raise HemosegError("'data' is not implemented yet")
