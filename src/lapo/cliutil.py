"""Turn a config dataclass into argparse options, with each field's docstring as its help.

``--num-envs 16`` sets ``num_envs``; booleans take ``--flag`` / ``--no-flag``.
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
    """Map each field of dataclass ``cls`` to the string literal that follows it in the source."""
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
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), **defaults: Any
) -> None:
    """Add one option per field of ``cls`` (except ``skip``); ``defaults`` override field defaults."""
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{docs.get(f.name, '')} (default: {default})"
        typ = hints[f.name]
        if typ is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_,
            )
        else:
            parser.add_argument(flag, dest=f.name, type=typ, default=default, help=help_)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """Build ``cls`` from the parsed options (and ``fixed`` values for skipped fields)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    values.update(fixed)
    return cls(**values)  # type: ignore[call-arg]
