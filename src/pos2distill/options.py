"""Config plumbing: typed fields whose help is the ``--help``, checks that name the flag, and the
argparse and YAML readers that build a config dataclass (:mod:`pos2distill.config`) from flags,
a YAML file or a mapping."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pos2distill.errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, **kw: Any) -> Any:
    """A typed config field whose ``help`` is its ``--help`` line (``kw`` goes to the field's
    metadata, e.g. ``count_when_set`` for :func:`pos2distill.runinfo.fingerprint`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def check_choice(flag: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"--{flag}: {value!r} is not one of {', '.join(map(str, choices))}")


def check_positive(flag: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"--{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def not_a_mapping(source: str) -> Any:
    raise ConfigError(f"{source}: must be a mapping of option: value")



def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; the field's help is the flag's help, its default is shown."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        typ = hints[f.name]
        help_ = f.metadata.get("help", "")
        if typ is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_} (default: {default})")
        elif int_or_ints(typ):
            parser.add_argument(_flag(f.name), dest=f.name, type=_one_or_more_ints,
                                default=argparse.SUPPRESS, metavar="N[,N,...]",
                                help=f"{help_} (default: {default})")
        elif typing.get_origin(typ) is list and typing.get_args(typ)[0] in (int, str):
            parser.add_argument(_flag(f.name), dest=f.name, type=_comma_list(typing.get_args(typ)[0]),
                                default=argparse.SUPPRESS, metavar="A,B,...",
                                help=f"{help_} (default: {','.join(map(str, default))})")
        elif typ is dict or typing.get_origin(typ) in (dict, list):
            parser.add_argument(_flag(f.name), dest=f.name, type=_json_value,
                                default=argparse.SUPPRESS, metavar="JSON",
                                help=f"{help_} (default: {json.dumps(default)})")
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=typ, default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=f"{help_} (default: {default})")
    parser.add_argument("--config", dest="_config", default=None, metavar="YAML",
                        help="Read options from a YAML file; flags given on the command line win.")


def _comma_list(typ: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [typ(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of "
                                             f"{typ.__name__}") from None
    return parse


def int_or_ints(typ: Any) -> bool:
    """Whether a field's type is ``int | list[int]`` (one number, or several)."""
    return set(typing.get_args(typ)) == {int, list[int]}


def _one_or_more_ints(text: str) -> int | list[int]:
    """``20`` → 20, ``10,20,30`` → [10, 20, 30]: a single number stays a number."""
    values = _comma_list(int)(text)
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number or a comma-separated list")
    return values[0] if len(values) == 1 else values


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None


def from_mapping(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a mapping; unknown keys are an error naming the known ones."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: "
                          f"{', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for k, v in values.items():
        typ = hints[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if typ is float and isinstance(v, str):
            # YAML 1.1 reads exponents without a dot (3e-6) as strings.
            try:
                v = float(v)
            except ValueError:
                pass
        if int_or_ints(typ):
            if not (isinstance(v, int) and not isinstance(v, bool)) and not (
                    isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                                      for x in v)):
                raise ConfigError(f"{source}: key '{k}' must be an int or a list of int, got {v!r}")
        if typ in (int, float, str, bool) and (not isinstance(v, typ)
                                               or (typ is not bool and isinstance(v, bool))):
            raise ConfigError(f"{source}: key '{k}' must be {typ.__name__}, got {v!r}")
        if typing.get_origin(typ) is list or typ is list:
            item = (typing.get_args(typ) or (object,))[0]
            item = typing.get_origin(item) or item
            if item in (int, str) and isinstance(v, item) and not isinstance(v, bool):
                v = [v]   # a single value where a list is expected
            if not isinstance(v, list) or not all(
                    isinstance(x, item) and not (item is int and isinstance(x, bool)) for x in v):
                raise ConfigError(f"{source}: key '{k}' must be a list of {item.__name__}, "
                                  f"got {v!r}")
        if (typ is dict or typing.get_origin(typ) is dict) and not isinstance(v, dict):
            raise ConfigError(f"{source}: key '{k}' must be a mapping, got {v!r}")
        converted[k] = v
    return cls(**converted)


def from_yaml(cls: type[C], path: str | Path) -> C:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config: {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of option: value")
    return from_mapping(cls, {k.replace("-", "_"): v for k, v in data.items()}, source=str(path))


def from_args(cls: type[C], ns: argparse.Namespace) -> C:
    values = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "command"}
    config_path = getattr(ns, "_config", None)
    if config_path:
        base = dataclasses.asdict(from_yaml(cls, config_path))  # type: ignore[call-overload]
        base.update(values)
        values = base
    return from_mapping(cls, values, source="flags")


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
