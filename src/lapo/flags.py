"""How a config field is spelled on the command line: the one owner of ``--option`` names (a
module of its own, below both the CLI and the ``reproduce`` pipeline that builds commands).

The parser generated from the config dataclasses (:mod:`lapo.cli.options`) and the commands that
``lapo reproduce`` builds from configs (:func:`to_flags`) both spell flags here, so a command
built from a config reads back as that config.
"""

from __future__ import annotations

import dataclasses


def flag(name: str) -> str:
    """The command-line option of config field ``name`` (``a.b`` for a nested field)."""
    return "--" + name.replace("_", "-")


def field_flag(f: dataclasses.Field, prefix: str = "") -> str:
    """The option of field ``f`` (its ``metadata["flag"]`` if set, else its name)."""
    return flag(prefix + f.metadata.get("flag", f.name))


def option(name_flag: str, value: object) -> list[str]:
    """``[flag, value]`` as a command line spells it: booleans as ``--x`` / ``--no-x``,
    lists comma-separated."""
    if isinstance(value, bool):
        return [name_flag if value else "--no-" + name_flag[2:]]
    if isinstance(value, list | tuple):
        return [name_flag, ",".join(str(v) for v in value)]
    return [name_flag, str(value)]


def to_flags(cfg: object, base: object = None, prefix: str = "") -> list[str]:
    """The options that turn ``base`` (default: the class's defaults) into ``cfg``: one per
    field whose value differs, so a command built from a config spells every flag as the
    CLI (generated from the same fields) reads it."""
    base = type(cfg)() if base is None else base
    out: list[str] = []
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value, was = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            out += to_flags(value, was, prefix + f.name + ".")
        elif value != was:
            out += option(field_flag(f, prefix), value)
    return out
