"""Flat YAML configs whose keys are the command-line flags (mindcv style).

A config file is a flat mapping loaded with ``yaml.safe_load``. Each command hands the loader its
option table (its :class:`Settings` dataclass, see :mod:`dvt_ms.options`) and the keys of the other
commands that may share one config file; a key in none of them fails loading, naming the key.
On the command line every option is ``--key value``; values are parsed as YAML scalars or lists, so
``--exit_grids 4,6,8``, ``--exit_grids [4,6,8]`` and ``--distribute True`` all work. Precedence:
built-in defaults < YAML file < command line.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import yaml

from .files import atomic_output


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the file, key and value."""


@dataclass(frozen=True)
class Option:
    """One config key / command-line flag.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``list`` (of numbers), ``int_or_list``,
    ``float_or_list``, ``paths`` (one or more strings: ``--images a.jpg b/``), ``any``. ``choices``
    restricts a ``str`` or ``int`` option, ``minimum`` a number. A ``bool`` flag given without a value
    means True. ``aliases`` are further spellings of the flag (``--to-torch`` for ``--to_torch``).
    ``exists`` marks an input that a command checks before it runs (:meth:`Settings.check_inputs`).
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    aliases: tuple[str, ...] = ()
    exists: str | None = None  # "file", "dir" or "path": what the value must name on disk (an input)


def merge_options(*tables: Iterable[Option]) -> list[Option]:
    """The options of several tables, each name once (the first table that has it wins)."""
    merged: dict[str, Option] = {}
    for table in tables:
        for option in table:
            merged.setdefault(option.name, option)
    return list(merged.values())


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _as_float(value: Any) -> Any:
    # YAML 1.1 reads exponent notation without a dot (1e-3) as a string.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _numbers_from_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_float(v) for v in value]
    return _as_float(value)


def coerce(option: Option, value: Any, where: str) -> Any:
    """Check / convert ``value`` for ``option``; ``where`` names its origin in error messages."""
    if value is None:
        return None
    kind = option.kind
    if isinstance(value, str) and kind not in ("str", "paths"):
        if kind in ("list", "int_or_list", "float_or_list") and "," in value and not value.strip().startswith("["):
            value = [_parse_scalar(v) for v in value.split(",")]
        else:
            value = _parse_scalar(value)
    if kind in ("float", "float_or_list", "list"):
        value = _numbers_from_strings(value)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {option.name} must be {expected}, got {value!r}")

    if kind == "paths":
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise fail("one or more paths")
        return list(values)
    if kind == "str":
        value = str(value)
        if option.choices and value not in option.choices:
            raise fail("one of " + ", ".join(map(str, option.choices)))
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail("True or False")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        if option.choices and value not in option.choices:
            raise fail("one of " + ", ".join(map(str, option.choices)))
        if option.minimum is not None and value < option.minimum:
            raise fail(f">= {option.minimum:g}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        if option.minimum is not None and value < option.minimum:
            raise fail(f">= {option.minimum:g}")
        return float(value)
    if kind in ("list", "int_or_list", "float_or_list"):
        number = float if kind == "float_or_list" else (int, float)
        if isinstance(value, Sequence) and not isinstance(value, str):
            if not all(isinstance(v, number) and not isinstance(v, bool) for v in value):
                raise fail("a list of numbers")
            return list(value)
        if kind == "list":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return [value]
            raise fail("a list of numbers")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number or a list of numbers")
        return float(value) if kind == "float_or_list" else value
    return value


def load_yaml(path: str | os.PathLike, options: Iterable[Option]) -> dict[str, Any]:
    """Read a flat YAML config and validate it against ``options``; errors name the file and the key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a flat mapping of option: value, got {type(data).__name__}")
    return validate(data, options, where=path)


def validate(data: dict[str, Any], options: Iterable[Option], where: str = "config") -> dict[str, Any]:
    """Check that every key is one of ``options`` and every value has the right type."""
    options = {o.name: o for o in options}
    out = {}
    for key, value in data.items():
        if key not in options:
            close = difflib.get_close_matches(str(key), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown config key {key!r}{hint}")
        out[key] = coerce(options[key], value, where)
    return out


def build_parser(options: Iterable[Option], description: str = "", prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``-c/--config`` and one ``--name`` flag per option. No defaults are applied
    (unset flags stay ``None`` so that YAML values are not overwritten); the help shows each option's
    default once."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("-c", "--config", default=None, help="flat YAML config whose keys are these flags")
    for o in options:
        shape = {"paths": {"nargs": "+"}, "bool": {"nargs": "?", "const": "True"}}.get(o.kind, {})
        default = f" [default: {o.default}]" if o.default not in (None, False) else ""
        parser.add_argument(f"--{o.name}", *(f"--{a}" for a in o.aliases), dest=o.name, default=None,
                            metavar=o.name.upper() if o.kind != "bool" else "BOOL", **shape, help=o.help + default)
    return parser


def resolve(options: Iterable[Option], argv: Sequence[str] | None = None, description: str = "",
            prog: str | None = None, defaults: dict[str, Any] | None = None,
            shared_with: Iterable[Option] = ()) -> dict[str, Any]:
    """Defaults < YAML (``-c``) < command line, validated. Returns the flat resolved config.

    ``options`` are this command's flags. ``shared_with`` are the flags of the other commands whose
    keys a config file may also hold (e.g. training keys when evaluating): such keys are validated and
    kept, so one file serves every command, but they are not flags of this one.
    """
    options = list(options)
    known = {o.name: o for o in options}
    parser = build_parser(options, description, prog)
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = {o.name: o.default for o in options}
    cfg.update(defaults or {})
    if args.config:
        cfg.update(load_yaml(args.config, merge_options(options, shared_with)))
    for name, o in known.items():
        raw = getattr(args, name)
        if raw is not None:
            cfg[name] = coerce(o, raw, f"--{name}")
    cfg["config"] = args.config
    return cfg


def dump_yaml(cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config (or :meth:`Settings.to_dict`) atomically (temp file, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump({k: v for k, v in cfg.items() if k != "config"}, f, sort_keys=False)


# ---- typed settings ------------------------------------------------------------------------------

_EXISTS = {"file": (os.path.isfile, "no such file"), "dir": (os.path.isdir, "no such directory"),
           "path": (os.path.exists, "no such file or directory")}
_KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list[float]": "list", "list[int]": "list",
          "list[str]": "paths"}


def flag(default: Any = None, help: str = "", *, kind: str | None = None, choices: tuple[Any, ...] | None = None,
         minimum: float | None = None, aliases: tuple[str, ...] = (), exists: str | None = None) -> Any:
    """A field of a :class:`Settings` dataclass that is also a flag and a config key.

    ``kind`` is read from the field's annotation (``int``, ``float | None``, ``list[float]``, ...) unless
    given; a list default is copied for every instance. ``exists`` (``file``, ``dir``, ``path``): the value
    names an input that must be there when the command runs."""
    if exists not in (None, *_EXISTS):
        raise ValueError(f"exists must be one of {', '.join(_EXISTS)}, got {exists!r}")
    meta = {"help": help, "kind": kind, "choices": choices, "minimum": minimum, "aliases": aliases, "exists": exists}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@functools.cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The :class:`Option` of every field of a :class:`Settings` dataclass, in field order."""
    table = []
    for f in fields(cls):
        kind = f.metadata.get("kind") or _KINDS.get(str(f.type).replace(" | None", "").strip())
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: cannot tell the option kind of {f.type!r}; pass kind=")
        default = f.default_factory() if f.default is MISSING else f.default
        table.append(Option(f.name, kind, default, f.metadata.get("help", ""), f.metadata.get("choices"),
                            f.metadata.get("minimum"), f.metadata.get("aliases", ()), f.metadata.get("exists")))
    return tuple(table)


@dataclass
class Settings:
    """Base of the typed settings of a command: a dataclass whose fields are its flags and config keys.

    Building one checks and converts every value as a flag or YAML value would be (``ConfigError``
    names the field), then runs :meth:`check` for rules that involve several fields."""

    def __post_init__(self) -> None:
        where = type(self).__name__
        for option in options_of(type(self)):
            setattr(self, option.name, coerce(option, getattr(self, option.name), where))
        self.check()

    def check(self) -> None:
        """Rules between fields; raise :class:`ConfigError`. The base has none."""

    def check_inputs(self) -> None:
        """Every input the settings name (options declared with ``exists``) is there: a :class:`ConfigError`
        naming the first flag and path that is not (a command checks this before it runs; the library
        functions report a missing file when they reach it)."""
        for option in options_of(type(self)):
            value = getattr(self, option.name)
            if option.exists is None or not value:
                continue
            test, missing = _EXISTS[option.exists]
            for path in value if isinstance(value, list) else [value]:
                if not test(path):
                    raise ConfigError(f"--{option.name} {path}: {missing}")

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        """The option table of these settings (flags and config keys)."""
        return options_of(cls)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]):
        """The settings from a resolved config (keys of other commands are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Every field and its value (what ``config.yaml`` of a run records)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any):
        """A copy with ``changes``, checked again."""
        return replace(self, **changes)


def parse_settings(cls: type, argv: Sequence[str] | None = None, description: str = "", prog: str | None = None,
                   shared_with: Iterable[Option] = ()):
    """``cls`` (a :class:`Settings` dataclass) from defaults < YAML (``-c``) < command line.

    The ``config`` path, when given, is kept as the settings' ``config_file`` attribute."""
    cfg = resolve(cls.options(), argv, description, prog, shared_with=shared_with)
    settings = cls.from_config(cfg)
    settings.config_file = cfg["config"]
    settings.check_inputs()
    return settings
