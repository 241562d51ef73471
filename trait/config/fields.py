"""Typed config dataclasses: ``field(help=...)``, conversion and checks (``from_dict``), and the field list
(``describe``) that command-line options, ``--help`` and the docs are made from."""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trait import UserError

T = TypeVar("T")

# Number literals YAML 1.1 reads as strings (it wants a dot and a signed exponent): '3e-3', '1e6', '2.5e5'.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")
_MAX_INT_DIGITS = 18  # an integer written as '1e6' may have at most this many digits (int64 range)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


class ConfigError(UserError, ValueError):
    """A configuration value or key is wrong; the message says which and what to do."""


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text in metadata (shown by ``describe`` and ``trait COMMAND --help``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def _short(value: Any) -> str:
    """A bounded one-line repr of a user's value for an error message."""
    return _SHORT.repr(value)


def _key(key: Any) -> str:
    """A user's mapping key as a part of a dotted path in a message: as written if it is a plain word."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 80 else _short(key)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _suggest(key: Any, names: list[str]) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"


# --- types ---------------------------------------------------------------------------------------------------------

def _union_args(tp: Any) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else None


def _strip_none(tp: Any) -> Any:
    """``X | None`` -> ``X``; of a wider union, its one dataclass (the part that has keys), else the union."""
    args = _union_args(tp)
    if args is None:
        return tp
    rest = [a for a in args if a is not type(None)]
    classes = [a for a in rest if dataclasses.is_dataclass(a)]
    return rest[0] if len(rest) == 1 else classes[0] if len(classes) == 1 else tp


def type_name(tp: Any) -> str:
    """How a field's type reads in help and error messages: ``int``, ``str | null``, ``list[float]``, ``mapping``."""
    args = _union_args(tp)
    if args is not None:
        return " | ".join(type_name(a) for a in args)
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"list[{type_name(typing.get_args(tp)[0])}]" if typing.get_args(tp) else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping or string" if hasattr(tp, "from_str") else "mapping"
    return {Any: "any", Path: "path"}.get(tp, getattr(tp, "__name__", str(tp)))


def _float(value: Any, where: str) -> float:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)  # '3e-3': YAML 1.1 reads it as a string
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 1e308:
            raise ConfigError(f"{where}: {_short(value)} is too large for a float")
        value = float(value)
    if not isinstance(value, float):
        raise ConfigError(f"{where}: expected float, got {_short(value)}; write a number such as 0.5 or 3e-3")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = decimal.Decimal(value.strip())  # '1e6': exact, unlike float()
        if number == number.to_integral_value() and number.adjusted() < _MAX_INT_DIGITS:
            return int(number)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {_short(value)}")
    return value


def _call(func, *args, where: str) -> Any:
    """``func(*args)`` for a user's value (``from_str``, ``validate``): a ValueError-like failure is a ConfigError."""
    try:
        return func(*args)
    except UserError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from exc


def _convert(tp: Any, value: Any, where: str) -> Any:
    args = _union_args(tp)
    if args is not None:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {_short(value)} is none of {type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        return origin(_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_convert(key_tp, k, f"{where} key"): _convert(value_tp, v, f"{where}.{_key(k)}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and hasattr(tp, "from_str"):
            return _call(tp.from_str, value, where=where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short(value)}")
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is float:
        return _float(value, where)
    if tp is int:
        return _int(value, where)
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {_short(value)}")
    return value


def from_dict(cls: type[T], data: dict, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types, then ``validate()`` it."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_short(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {_short(key)}{_suggest(key, names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {f.name!r} ({f.metadata.get('help', '')})")
    obj = _call(lambda: cls(**kwargs), where=where)
    check = getattr(obj, "validate", None)
    if check is not None:
        _call(check, where=where)
    return obj


# --- fields --------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One field of a config, nested ones included: ``key`` is dotted, list items are ``N`` (``inputs.N.path``)."""

    key: str
    type: Any
    default: Any  # dataclasses.MISSING when the field is required
    help: str

    @property
    def shape(self) -> str | None:
        """How a command line gives it: 'bool' (a switch), 'value', 'list' (values), or None (only by --set)."""
        tp = _strip_none(self.type)
        if tp is bool:
            return "bool"
        if _command_line_value(tp):
            return "value"
        if typing.get_origin(tp) in (list, tuple) and _command_line_value(_strip_none(typing.get_args(tp)[0])):
            return "list"
        return None


def _command_line_value(tp: Any) -> bool:
    """One word on a command line is a whole value: a number, a string, a path, or a dataclass's ``from_str``."""
    return all(a in (str, int, float, Path) or dataclasses.is_dataclass(a) and hasattr(a, "from_str")
               for a in (_union_args(tp) or (tp,)) if a is not type(None))


def _inner_class(tp: Any) -> tuple[type, str] | None:
    """The dataclass inside ``X``, ``X | None`` or ``list[X]``, with the key part leading to its fields."""
    tp = _strip_none(tp)
    if dataclasses.is_dataclass(tp):
        return tp, "."
    if typing.get_origin(tp) in (list, tuple) and dataclasses.is_dataclass(_strip_none(typing.get_args(tp)[0])):
        return _strip_none(typing.get_args(tp)[0]), ".N."
    return None


def describe(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every field of ``cls``, each nested dataclass's fields right after the field holding it."""
    docs = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()
                   if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        docs.append(FieldDoc(prefix + f.name, hints[f.name], default, f.metadata.get("help", "")))
        inner = _inner_class(hints[f.name])
        if inner is not None:
            docs += describe(inner[0], prefix + f.name + inner[1])
    return docs


def show(value: Any) -> str:
    """A value as it would be written in YAML, on one line: ``null``, ``true``, ``[1, 5]``, ``{seed: 0}``."""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def to_dict(obj: Any) -> Any:
    """Plain JSON-able view of a config (Paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
