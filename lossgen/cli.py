"""`lossgen build|show|check`: a thin command line over lossgen's Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lossgen import api
from lossgen.errors import LossgenError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossgen",
        description="Generate PyTorch losses with symbolic backward passes from SymPy specs.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build", help="generate code for the losses in the specs"
    )
    build.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (Python)")
    build.add_argument("-o", "--out", default="generated", help="output directory")
    build.add_argument(
        "-j",
        "--jobs",
        type=int,
        help="processes deriving losses in parallel (default: one per CPU)",
    )

    show = commands.add_parser(
        "show", help="print each loss, its arguments and derivatives"
    )
    show.add_argument("specs", nargs="+", metavar="SPEC")

    check = commands.add_parser(
        "check", help="verify generated code is current and its gradients are right"
    )
    check.add_argument("specs", nargs="+", metavar="SPEC")
    check.add_argument("-o", "--out", default="generated", help="output directory")
    check.add_argument("--json", action="store_true", help="machine-readable report")
    check.add_argument(
        "--no-numeric", action="store_true", help="only check drift (fast)"
    )

    plot = commands.add_parser(
        "plot", help="draw each loss and its derivative over its first tensor (PNG)"
    )
    plot.add_argument("specs", nargs="+", metavar="SPEC")
    plot.add_argument("-o", "--out", default=".", help="directory for <loss>.png")
    plot.add_argument(
        "--range", nargs=2, type=float, metavar=("LOW", "HIGH"), dest="x_range"
    )
    plot.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="fixed",
        help="fix another tensor or a param (repeatable)",
    )
    plot.add_argument(
        "--vary", metavar="PARAM=V1,V2,...", help="one curve per value of a param"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except LossgenError as error:
        if args.debug:
            raise
        _error(str(error))
        return EXIT_USAGE
    except OSError as error:  # an unwritable output directory, a file in its place, ...
        if args.debug:
            raise
        _error(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
        return EXIT_USAGE
    except Exception as error:
        # a lossgen bug: still one line, the traceback on request
        if args.debug:
            raise
        _error(
            f"internal error (a lossgen bug; rerun with --debug for the traceback): "
            f"{type(error).__name__}: {error}"
        )
        return EXIT_USAGE


def _error(message: str) -> None:
    """Report an error on exactly one line of stderr (tools and CI logs grep for it)."""
    lines = message.strip().splitlines() or [""]
    print(f"lossgen: error: {lines[0]}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        result = api.build(args.specs, args.out, args.jobs)
        for name in result.written:
            print(f"wrote {(result.out_dir / name).as_posix()}")
        print(
            f"{len(result.files)} files in {result.out_dir.as_posix()}: "
            f"{len(result.written)} written, {len(result.unchanged)} unchanged"
        )
        return EXIT_OK
    if args.command == "show":
        sys.stdout.write(api.show(args.specs))
        return EXIT_OK
    if args.command == "plot":
        from lossgen import plot  # imports torch and matplotlib: only when plotting

        settings = plot.parse_settings(args.x_range, args.fixed, args.vary)
        per_loss = plot.settings_for(api.load_models(args.specs), settings)
        for path in plot.plot(args.specs, args.out, per_loss):
            print(f"wrote {path.as_posix()}")
        for model in api.load_models(args.specs):
            if model.reduces:
                print(f"skipped {model.name}: it reduces over dims (no 1-D curve)")
        return EXIT_OK
    from lossgen import verify  # imports torch: only when checking

    report = verify.check(args.specs, args.out, numeric=not args.no_numeric)
    sys.stdout.write(report.to_json() if args.json else report.to_text())
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
