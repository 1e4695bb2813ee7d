"""How `--help` looks: a flag shows no value type (Typer would print `<bool>` beside `--force`), and the other
options name their value (WORD, FILE) rather than a Python type. Options and help texts are written to fit 80
columns; tests/test_cli_everyday.py renders every command's help at that width."""

from __future__ import annotations

from typer.core import TyperGroup

# The value each type of option takes, as its help shows it (Typer would print `<int>`, `<list[str]>`, `<bool>`).
_VALUES = {"int": "N", "float": "X", "str": "TEXT", "Path": "PATH"}


def plain_flags(params: list) -> list:
    """`params` with every flag's value type blanked (a flag takes no value) and every other option's named by
    what it takes (N, X, TEXT, PATH) unless the option names it itself."""
    for p in params:
        if p.metavar is not None or p.param_type_name != "option":
            continue
        if getattr(p, "is_flag", False):
            p.metavar = ""
        elif hasattr(p, "bare_type"):
            bare = p.bare_type()
            element = bare.removeprefix("list[").removesuffix("]")
            if element in _VALUES:
                p.metavar = _VALUES[element]
    return params


class Group(TyperGroup):
    """The `textinv` group: its own options and each command's shown with `plain_flags`."""

    def get_params(self, ctx):
        return plain_flags(super().get_params(ctx))

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            plain_flags(command.get_params(ctx))
        return command
