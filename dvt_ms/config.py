"""Flat YAML configs whose keys are the command-line flags (mindcv style).

A config file is a flat mapping loaded with ``yaml.safe_load``. Each command hands the loader its
option tables (the model options here, its own flags, and the flags of the other commands that may
share one config file); a key in none of them fails loading, naming the key.
On the command line every option is ``--key value``; values are parsed as YAML scalars or lists, so
``--exit_grids 4,6,8``, ``--exit_grids [4,6,8]`` and ``--distribute True`` all work. Precedence:
built-in defaults < YAML file < command line.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .checkpoint import atomic_output


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the file, key and value."""


@dataclass(frozen=True)
class Option:
    """One config key / command-line flag.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``list`` (of numbers), ``int_or_list``,
    ``float_or_list``, ``paths`` (one or more strings: ``--images a.jpg b/``), ``any``. ``choices``
    restricts a ``str`` option. A ``bool`` flag given without a value means True.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None


MODEL_OPTIONS: tuple[Option, ...] = (
    Option("model", "str", None, "registered model name, see dvt_ms.list_models()"),
    Option("num_classes", "int", None, "classes of every exit head"),
    Option("img_size", "int", None, "input side in pixels"),
    Option("in_chans", "int", None, "input channels"),
    Option("exit_grids", "list", None, "token grid side of each exit, e.g. 7,10,14"),
    Option("embed_dim", "int_or_list", None, "embedding width (one value or one per exit)"),
    Option("depth", "int_or_list", None, "blocks per exit (one value or one per exit)"),
    Option("num_heads", "int_or_list", None, "attention heads (one value or one per exit)"),
    Option("mlp_ratio", "float_or_list", None, "MLP width ratio (one value or one per exit)"),
    Option("qkv_bias", "bool", None, "bias in the qkv projection"),
    Option("norm_eps", "float", None, "LayerNorm epsilon of the transformer blocks"),
    Option("patch_sizes", "list", None, "patch-embedding kernel per exit (patch stems)"),
    Option("patch_paddings", "list", None, "patch-embedding padding per exit (patch stems)"),
    Option("t2t_unfolds", "any", None, "per exit three [kernel, stride, padding] soft splits (T2T stems)"),
    Option("t2t_variant", "str", None, "T2T token module", ("performer", "transformer")),
    Option("token_dim", "int", None, "T2T token width"),
    Option("drop_rate", "float", None, "dropout"),
    Option("attn_drop_rate", "float", None, "attention dropout"),
    Option("drop_path_rate", "float", None, "stochastic depth rate of the last block"),
    Option("feature_reuse", "bool", None, "downstream exits reuse the previous exit's features"),
    Option("relation_reuse", "bool", None, "downstream exits reuse the previous exit's attention logits"),
    Option("exit_names", "any", None, "attribute names of the exits (parameter prefixes)"),
)

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
            raise fail("one of " + ", ".join(option.choices))
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail("True or False")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
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
    """An argparse parser with ``-c/--config`` and one ``--name`` flag per option (no defaults applied:
    unset flags stay ``None`` so that YAML values are not overwritten)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-c", "--config", default=None, help="flat YAML config whose keys are these flags")
    for o in options:
        shape = {"paths": {"nargs": "+"}, "bool": {"nargs": "?", "const": "True"}}.get(o.kind, {})
        parser.add_argument(f"--{o.name}", default=None, **shape,
                            help=o.help + (f" [default: {o.default}]" if o.default is not None else ""))
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


def model_overrides(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model arguments set in a resolved config (all model keys but ``model`` that are not None)."""
    names = {o.name for o in MODEL_OPTIONS} - {"model"}
    return {k: v for k, v in cfg.items() if k in names and v is not None}


def named_model(cfg: dict[str, Any], recorded: dict | None) -> tuple[str, dict[str, Any], str] | None:
    """``(name, arguments, where from)`` of the model a command should build: the config's ``model``
    with its model keys, else the model recorded in a checkpoint's metadata (``model``, ``model_args``)
    with the config's model keys on top; None when neither names a model."""
    if cfg.get("model"):
        return cfg["model"], model_overrides(cfg), "given"
    if recorded and recorded.get("model"):
        return recorded["model"], {**(recorded.get("model_args") or {}), **model_overrides(cfg)}, \
            "recorded in the checkpoint"
    return None


def build_named_model(cfg: dict[str, Any], metadata: dict | None, source: str) -> tuple[Any, str, dict[str, Any]]:
    """``(model, name, arguments)`` of :func:`named_model`, built (weights not loaded); ``source`` names the
    checkpoint in the :class:`ConfigError` raised when nothing names a model or it cannot be built."""
    from .models import create_model

    chosen = named_model(cfg, metadata)
    if chosen is None:
        raise ConfigError(f"no model given and {source} does not name one: pass --config configs/<model>.yaml or "
                          "--model NAME")
    name, arguments, _ = chosen
    try:
        return create_model(name, **arguments), name, arguments
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot build model {name!r}: {err}") from None


def create_model_from_config(cfg: dict[str, Any], **extra: Any):
    """``create_model(cfg['model'], **model keys of cfg, **extra)``."""
    from .models import create_model

    if not cfg.get("model"):
        raise ConfigError("the config names no model: set 'model' (see dvt_ms.list_models())")
    try:
        return create_model(cfg["model"], **{**model_overrides(cfg), **extra})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot build model {cfg['model']!r}: {err}") from None


def spec_from_config(cfg: dict[str, Any]):
    """The :class:`CascadeSpec` of the config's model, without building the network."""
    from .models import spec_for

    if not cfg.get("model"):
        raise ConfigError("the config names no model: set 'model' (see dvt_ms.list_models())")
    try:
        return spec_for(cfg["model"], **model_overrides(cfg))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot build model {cfg['model']!r}: {err}") from None


def dump_yaml(cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config atomically (temp file, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump({k: v for k, v in cfg.items() if k != "config"}, f, sort_keys=False)
