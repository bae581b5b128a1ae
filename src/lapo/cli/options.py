"""Config dataclasses as command-line options: one ``--option`` per field, its docstring the help.

``--num-envs 16`` sets ``num_envs``; booleans take ``--flag`` / ``--no-flag``; lists are
comma-separated; a nested dataclass field ``quantizer`` gives ``--quantizer.kind`` etc.; a field's
``metadata["flag"]`` renames its option. Options absent from the command line are absent from
the parsed namespace, so :func:`apply_overrides` changes only what the command line names, on top
of a base: the class's defaults, a named preset or a saved run's config (:func:`config_from_file`).
Building the config checks every value (:mod:`lapo.config`), before any data is read; a value out
of range is one line naming its option. Flags are spelled by :func:`lapo.flags.field_flag`,
as are the commands that :func:`lapo.flags.to_flags` builds for ``lapo reproduce``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from lapo.config import PRESETS, config_from_dict, preset
from lapo.errors import ConfigError, FieldError, UserError
from lapo.flags import field_flag

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` to the string literal that follows it in the source
    (of ``cls`` or, for an inherited field, of the base class that last declares it)."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[:-1]):
        docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parser_of(typ: Any) -> Callable[[str], Any]:
    """What turns the option's text into a value of field type ``typ``."""
    if get_origin(typ) is list:
        item = get_args(typ)[0]

        def items(text: str) -> list:
            return [item(x) for x in text.split(",")]

        items.__name__ = f"comma-separated {item.__name__}"
        return items
    # X | None: the option gives an X
    return next((a for a in get_args(typ) if a is not type(None)), typ)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    prefix: str = "",
    required: tuple[str, ...] = (),
) -> None:
    """Add one option per field of ``cls`` (except ``skip``; only ``only`` if given),
    recursing into nested dataclasses; ``prefix`` starts each name (``idm_`` gives
    ``--idm-width``). Options absent from the command line stay absent from the namespace;
    ``defaults`` (an instance of ``cls``, e.g. a preset; default: the class's defaults) only
    shows in the help; ``required`` fields say so there (the handler checks them, as
    ``--config`` may give them instead)."""
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        typ, shown = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(typ):
            add_dataclass_args(parser, typ, shown, prefix=prefix + f.name + ".")
            continue
        kind: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if typ is bool else {"type": _parser_of(typ)}
        )
        if "flag" in f.metadata and typ is not bool:
            kind["metavar"] = f.metadata["flag"].upper()
        parser.add_argument(
            field_flag(f, prefix),
            dest=prefix + f.name,
            default=argparse.SUPPRESS,
            help=f"{docs.get(f.name, '')} "
            + ("(required)" if f.name in required else f"(default: {_shown(shown)})"),
            **kind,
        )


def apply_overrides(cfg: T, args: argparse.Namespace, prefix: str = "") -> T:
    """A copy of ``cfg`` with every option given on the command line applied; a value the
    config refuses is a :class:`ConfigError` that names its option."""
    changes = {}
    fields = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    for name in fields:
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            changes[name] = apply_overrides(value, args, prefix + name + ".")
        elif hasattr(args, prefix + name):
            changes[name] = getattr(args, prefix + name)
    try:
        return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    except FieldError as e:
        if e.field not in fields:
            raise
        raise ConfigError(f"{field_flag(fields[e.field], prefix)} {e.problem}") from None


def config_from_file(path: str | Path, cls: type[T], section: str, missing_ok: bool = False) -> T:
    """The ``cls`` saved under ``section`` (dotted for a nested one, e.g. ``supervised_idm.idm``)
    of a run's ``config.json``; ``None`` for a missing section with ``missing_ok``."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--config {path}: cannot read a run's config.json ({e})") from None
    for key in section.split("."):
        if not isinstance(config, dict) or key not in config:
            if missing_ok:
                return None  # type: ignore[return-value]
            raise UserError(
                f"--config {path} is not a run config of this command (no {section!r} "
                "section); pass the config.json of a run of the same kind"
            )
        config = config[key]
    return config_from_dict(cls, config, f"--config {path}")


def command_config(
    args: argparse.Namespace,
    cls: type[T],
    base: T | None = None,
    *,
    section: str = "",
    prefix: str = "",
    missing_ok: bool = False,
) -> T:
    """The config a command runs: a saved run's ``section`` (``--config``), else the
    ``--preset`` named (classes with presets), else ``base`` or the class's defaults; then the
    options given on the command line."""
    if getattr(args, "config", None):
        base = config_from_file(args.config, cls, section, missing_ok) or base
    elif cls in PRESETS and getattr(args, "preset", None):
        base = preset(cls, args.preset)
    return apply_overrides(cls() if base is None else base, args, prefix)
