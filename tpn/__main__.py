"""`python -m tpn [PATTERN]`: the model zoo as a Markdown table, parameters counted from the models."""

from __future__ import annotations

import argparse

from tpn.zoo import list_models, zoo_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tpn",
        description="List the model zoo as a Markdown table (parameters counted from the models).",
    )
    parser.add_argument(
        "pattern", nargs="?", default=None, help="glob over names, e.g. '*tiny*' (default: the 18 zoo rows)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; try python -m tpn '*'")
        return 1
    print(zoo_table(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
