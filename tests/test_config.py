"""Every numeric config field declares the values it accepts, and every command that exposes
it refuses one outside them the same way: one line on stderr naming the option, the value and
what is allowed, exit status 2, no traceback, nothing read or written."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any, get_origin

import pytest

from lapo import config
from lapo.cli import main
from lapo.cli.parser import COMMANDS
from lapo.config import Config, Range, numeric_kind
from lapo.errors import FieldError
from lapo.flags import field_flag

CONFIGS = [
    c
    for _, c in inspect.getmembers(config, inspect.isclass)
    if dataclasses.is_dataclass(c) and c.__module__ == config.__name__ and c is not Range
]

# each command that builds a config from its options: its other required arguments (folders
# that do not exist: a refused value must stop it before anything is read)
REQUIRED = {
    "expert train": ["--env", "coinrun", "--out", "{out}"],
    "expert distill": ["--env", "maze", "--out", "{out}"],
    "data import-video": ["{tmp}/videos", "--out", "{out}"],
    "lam train": ["--data", "{tmp}/data", "--out", "{out}"],
    "eval": ["--policy", "random", "--env", "coinrun"],
    "demo": ["--out", "{out}", "--runs", "{tmp}/runs"],
    "reproduce": ["--games", "coinrun", "--preset", "cpu", "--out", "{out}"],
    "bc train": ["--lam", "{tmp}/lam", "--data", "{tmp}/data", "--out", "{out}"],
    "decode offline": ["--policy", "{tmp}/bc", "--data", "{tmp}/data", "--out", "{out}"],
    "decode online": ["--policy", "{tmp}/bc", "--env", "coinrun", "--out", "{out}"],
    "baseline bc": ["--data", "{tmp}/data", "--out", "{out}"],
    "baseline idm-bc": ["--data", "{tmp}/data", "--out", "{out}"],
    "baseline ppo": ["--env", "coinrun", "--frames", "64", "--out", "{out}"],
}


def exposed_fields() -> list[tuple[str, type, dataclasses.Field, str, Any]]:
    """``(command, owner class, field, its option, its type)`` for every numeric config field
    on the command line, walked as :func:`lapo.cli.options.add_dataclass_args` walks them."""
    out = []

    def walk(command: str, cls: type, skip=(), only=None, prefix="", **_: Any) -> None:
        hints = config._hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip or (only is not None and f.name not in only):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                walk(command, hints[f.name], prefix=prefix + f.name + ".")
            elif numeric_kind(hints[f.name]):
                out.append((command, cls, f, field_flag(f, prefix), hints[f.name]))

    for name, _, _, _, configs in COMMANDS:
        for cls, kw in configs:
            walk(name, cls, **kw)
    return out


EXPOSED = exposed_fields()


def accepts(valid: Range, x: float) -> bool:
    """What a range means, spelled out here independently of :class:`Range`."""
    if valid.off and x == 0:
        return True
    low = x > valid.lo if valid.lo_open else x >= valid.lo
    return low and (x < valid.hi if valid.hi_open else x <= valid.hi)


def bad_values(valid: Range, kind: type) -> list[str]:
    """Values out of ``valid``: below it, negative, zero where refused, above it, huge, and for
    a float NaN and the infinities."""
    if kind is int:
        tried = [valid.lo - 1, -1, 0, valid.hi + 1, 10**15]
    else:
        tried = [valid.lo if valid.lo_open else valid.lo - 1, -1.0, 0.0]
        tried += [valid.hi if valid.hi_open else valid.hi * 2 + 1, 1e300]
    tried = [int(x) if kind is int else float(x) for x in tried]
    out = [repr(x) for x in dict.fromkeys(tried) if not accepts(valid, x)]
    return out + (["nan", "inf", "-inf"] if kind is float else [])


def test_every_config_dataclass_builds_on_config_and_every_number_declares_its_range():
    assert len(CONFIGS) >= 12
    for cls in CONFIGS:
        assert issubclass(cls, Config), cls
        cls()  # the defaults are in range
        hints = config._hints(cls)
        for f in dataclasses.fields(cls):
            if numeric_kind(hints[f.name]):
                valid = f.metadata.get("range")
                assert isinstance(valid, Range), f"{cls.__name__}.{f.name} declares no range"
                assert math.isfinite(valid.lo) and math.isfinite(valid.hi)


def test_every_numeric_field_is_on_the_command_line():
    """So the walk below reaches it (a field of a base class through a subclass's command)."""
    assert set(REQUIRED) == {name for name, *_, configs in COMMANDS if configs}
    for cls in CONFIGS:
        hints = config._hints(cls)
        for f in dataclasses.fields(cls):
            if numeric_kind(hints[f.name]):
                on = [
                    c for c, owner, g, *_ in EXPOSED if issubclass(owner, cls) and g.name == f.name
                ]
                assert on, f"{cls.__name__}.{f.name} is on no command"


def test_ranges_read_as_the_messages_say():
    assert str(Range(1, 65_536)) == "at least 1 and at most 65536"
    assert str(Range(0, 1, hi_open=True)) == "at least 0 and below 1"
    assert str(Range(1, 9, off="never")) == "0 (never) or at least 1 and at most 9"
    assert str(Range(64, 64)) == "64"
    assert 0 in Range(1, 9, off="never") and 0 not in Range(1, 9)
    assert math.nan not in Range(0, 1) and math.inf not in Range(0, 1e300)
    with pytest.raises(FieldError, match="learning_rate must be above 0"):
        config.LAMConfig(learning_rate=0.0)


@pytest.fixture(scope="module")
def parser() -> Any:
    from lapo.cli.parser import build_parser

    return build_parser()


@pytest.fixture
def one_parser(parser, monkeypatch):
    """``main`` parses with one parser built for the module (a build adds every command's
    options: most of the time of a refused command)."""
    monkeypatch.setattr("lapo.cli.parser.build_parser", lambda: parser)


def nothing_written(tmp: Path) -> bool:
    return not any(tmp.iterdir())


@pytest.mark.parametrize(
    ("command", "flag"),
    sorted({(c, flag) for c, _, _, flag, _ in EXPOSED}),
    ids=lambda x: x.replace(" ", "-"),
)
def test_a_value_out_of_range_is_one_line_and_exit_2_before_anything_happens(
    command, flag, tmp_path, capsys, one_parser
):
    (_, _, f, _, hint), *_ = [e for e in EXPOSED if e[0] == command and e[3] == flag]
    fixed = [a.format(tmp=tmp_path, out=tmp_path / "out") for a in REQUIRED[command]]
    kind, is_list = numeric_kind(hint), get_origin(hint) is list
    values = bad_values(f.metadata["range"], kind)
    assert len(values) >= 2, (command, flag, values)
    for text in values:
        argv = [*command.split(), *fixed, f"{flag}={text}"]
        try:
            status = main(argv)
        except SystemExit as e:  # argparse: the value did not even parse
            pytest.fail(f"{argv}: exit {e.code}: {capsys.readouterr().err}")
        out, err = capsys.readouterr()
        value = kind(text)
        shown = repr([value] if is_list else value)
        assert status == 2, (argv, out, err)
        assert err.startswith("lapo: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err and flag + " must" in err and shown in err, (argv, err)
        assert nothing_written(tmp_path), (argv, list(tmp_path.iterdir()))


def test_a_saved_config_out_of_range_is_one_line(tmp_path, capsys):
    saved = dataclasses.asdict(config.preset(config.LAMConfig, "cpu"))
    saved["quantizer"]["decay"] = math.nan
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"kind": "lam", "lam": saved}))
    argv = ["lam", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main([*argv, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quantizer.decay must be at least 0 and below 1, got nan" in err
    assert not (tmp_path / "run").exists()
