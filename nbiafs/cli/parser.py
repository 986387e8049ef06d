"""The argument parser of every ``nbiafs`` command: argparse, with a suggestion for a mistyped option or
subcommand (Python 3.12's ``suggest_on_error`` does the second only, and not on 3.10/3.11: difflib here).

Unknown options are reported by the subcommand they were given to, with its usage, not the top-level one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, NoReturn

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors suggest the closest option or choice."""

    def option_names(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def suggest(self, word: str) -> str | None:
        """The option closest to ``word`` (``--foo=x`` compares ``--foo``), if one is close enough."""
        name = word.split("=", 1)[0]
        matches = difflib.get_close_matches(name, self.option_names(), n=1, cutoff=0.6)
        return matches[0] if matches else None

    def unknown(self, extras: list[str]) -> NoReturn:
        """Report arguments this parser did not recognise, with a suggestion for the first option."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        for word in extras:
            if word.startswith("-"):
                close = self.suggest(word)
                if close:
                    message += f" (did you mean {close}?)"
                break
        self.error(message)

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice and "did you mean" not in message:
            options = re.findall(r"'([^']*)'", choice.group(2))
            matches = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
            if matches:
                message += f" (did you mean {matches[0]!r}?)"
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def subparser_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The innermost subcommand parser that parsed ``args`` (or ``parser`` itself)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.dest is not argparse.SUPPRESS:
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return subparser_of(action.choices[name], args)
    return parser
