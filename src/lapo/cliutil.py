"""Turn a config dataclass into argparse options, with each field's docstring as its help.

``--num-envs 16`` sets ``num_envs``; booleans take ``--flag`` / ``--no-flag``; a nested
dataclass field ``quantizer`` gives options ``--quantizer.kind`` etc.

Two ways to use it: :func:`add_dataclass_args` + :func:`dataclass_from_args` when the
dataclass defaults are the defaults, or ``overrides_only=True`` + :func:`apply_overrides`
when a named preset supplies them and the command line only overrides what it names.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


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


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    prefix: str = "",
    overrides_only: bool = False,
    defaults: Any = None,
) -> None:
    """Add one option per field of ``cls`` (except ``skip``), recursing into nested dataclasses.

    With ``overrides_only``, options absent from the command line are absent from the parsed
    namespace (see :func:`apply_overrides`); ``defaults`` (an instance of ``cls``, e.g. a
    preset) only changes the help text then.
    """
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = hints[f.name]
        dest = prefix + f.name
        shown = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if dataclasses.is_dataclass(typ):
            add_dataclass_args(parser, typ, (), dest + ".", overrides_only, shown)
            continue
        flag = "--" + (prefix + f.name.replace("_", "-"))
        help_ = f"{docs.get(f.name, '')} (default: {shown})"
        default = argparse.SUPPRESS if overrides_only else shown
        if typ is bool:
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_
            )
        else:
            parser.add_argument(flag, dest=dest, type=typ, default=default, help=help_)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """Build ``cls`` from the parsed options (and ``fixed`` values for skipped fields)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    values.update(fixed)
    return cls(**values)  # type: ignore[call-arg]


def apply_overrides(cfg: T, args: argparse.Namespace, prefix: str = "") -> T:
    """A copy of ``cfg`` with every option given on the command line applied."""
    changes = {}
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = apply_overrides(value, args, prefix + f.name + ".")
        elif hasattr(args, prefix + f.name):
            changes[f.name] = getattr(args, prefix + f.name)
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
