"""Typed configuration: dataclasses with help text on each field, loaded from YAML, overrides and templates.

One loader serves every command and every pipeline stage (docs/configuration.md):

- ``load_config(cls, path, overrides, vars)``: a YAML file (or none), ``dotted.key=value`` overrides on top,
  ``${name}`` templates filled in, then typed and validated; ``resolve_config`` does the same for a mapping already
  in memory (a fragment of a pipeline config).
- Unknown keys are rejected with a "did you mean", types are checked, and every mistake is one ``ConfigError``
  line (file:line:col for YAML syntax), never a traceback.
- ``describe(cls)`` lists every field, nested ones by dotted key, with type, default and help: the CLI's options
  and ``--help`` come from it. The resolved config is what every job writes into its manifest (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trait import UserError

T = TypeVar("T")

VARS = "vars"  # the reserved top-level key of a config file holding its template variables
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")  # ${name}; $${name} is the literal text ${name}
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


def _accepts_str(tp: Any) -> bool:
    """Whether a string is a complete value of ``tp``: str, a path, or a dataclass with a ``from_str`` form."""
    return any(a in (str, Path) or dataclasses.is_dataclass(a) and hasattr(a, "from_str")
               for a in (_union_args(tp) or (tp,)))


def _holds_dataclass(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(_holds_dataclass(a) for a in typing.get_args(tp))


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


# --- files, templates and overrides --------------------------------------------------------------------------------

def read_yaml(path: str | Path) -> dict:
    """The mapping at the top of a YAML file (an empty file is ``{}``); every way this fails is one ConfigError line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory; give a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the "
                          "file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = ""
        if exc.problem and exc.context and exc.context_mark:  # e.g. "while scanning a quoted scalar", where it began
            context = f" ({exc.context}, line {exc.context_mark.line + 1})"
        raise ConfigError(_one_line(f"{where}: YAML syntax error: {exc.problem or exc.context}{context}")) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{path}: character {chr(exc.character)!r} at offset {exc.position} is not allowed in "
                          "YAML; remove it") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # e.g. a date 2015-13-45, an int of 5000 digits
        raise ConfigError(f"{path}: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values (e.g. `lr: 0.5`), got "
                          f"{'a list' if isinstance(data, list) else 'a scalar'}: {_short(data)}")
    return data


def _lookup(name: str, values: dict, where: str) -> Any:
    if not _NAME.match(name):
        raise ConfigError(f"{where}: ${{{_key(name)}}}: a variable name is letters, digits and '_'")
    if name in values:
        return values[name]
    if name in os.environ:
        return os.environ[name]
    raise ConfigError(f"{where}: ${{{name}}} is not defined; set it in the config's `vars:` block, with "
                      f"--set vars.{name}=VALUE, or as an environment variable")


def _fill(text: str, values: dict, where: str) -> Any:
    if "$" not in text:
        return text
    whole = _REFERENCE.fullmatch(text)
    if whole and not whole.group(1):  # the whole value: the variable's own value, of its own type
        return _lookup(whole.group(2), values, where)

    def one(match: re.Match) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        value = _lookup(match.group(2), values, where)
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: ${{{match.group(2)}}} is a {type(value).__name__}; it can only stand "
                              "alone as a whole value")
        return str(value)

    return _REFERENCE.sub(one, text)


def substitute(value: Any, values: dict, where: str = "config") -> Any:
    """``value`` with each ``${name}`` in its strings filled in from ``values``, else the environment (else a
    ConfigError naming it). A string that is one reference takes the variable's value and type; ``$${x}`` is the
    text ``${x}``. Containers are rebuilt, never changed; a YAML alias is filled once."""
    done: dict[int, Any] = {}

    def walk(node: Any, at: str) -> Any:
        if isinstance(node, str):
            return _fill(node, values, at)
        if not isinstance(node, (list, dict)):
            return node
        if id(node) not in done:
            done[id(node)] = ([walk(v, f"{at}[{i}]") for i, v in enumerate(node)] if isinstance(node, list)
                              else {k: walk(v, f"{at}.{_key(k)}") for k, v in node.items()})
        return done[id(node)]

    return walk(value, where)


def _path_types(cls: type, parts: list[str], label: str) -> list[Any]:
    """The type at each level of a dotted key: the containers', then the leaf's. Unknown keys fail here."""
    tp, found = cls, []
    for i, part in enumerate(parts):
        tp = _strip_none(tp)
        found.append(tp)
        at = ".".join(map(_key, parts[:i]))
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise ConfigError(f"{label}: unknown key {part!r}{f' in {at}' if i else ''}{_suggest(part, names)}")
            tp = typing.get_type_hints(tp)[part]
        elif origin in (list, tuple):
            if not part.isdigit():
                raise ConfigError(f"{label}: {at} is a list; address an item by its index, e.g. "
                                  f"{'.'.join(map(_key, parts[:i] + ['0'] + parts[i + 1:]))}")
            tp = (typing.get_args(tp) or (Any,))[0]
        elif origin is dict or tp is dict:
            tp = (typing.get_args(tp) or (Any, Any))[1]
        elif tp is not Any:
            raise ConfigError(f"{label}: {at} is a {type_name(tp)}; it has no key {part!r}")
    return found + [tp]


def _put(node: Any, parts: list[str], kinds: list[Any], value: Any, label: str, done: list[str]) -> Any:
    """``node`` with ``value`` at ``parts``; the containers on the way are copied (a YAML alias keeps its value)."""
    if not parts:
        return value
    head, at = parts[0], ".".join(map(_key, done)) or "the top level"
    kind = typing.get_origin(kinds[0])
    is_list = kind in (list, tuple) or kinds[0] is Any and (isinstance(node, list) or node is None and head.isdigit())
    if node is None:
        node = [] if is_list else {}
    if is_list:
        if not isinstance(node, list):
            raise ConfigError(f"{label}: {at} is {_short(node)}, not a list")
        if not head.isdigit():
            raise ConfigError(f"{label}: {at} is a list; address an item by its index, not {head!r}")
        index = int(head)
        if index > len(node):
            raise ConfigError(f"{label}: {at} has {len(node)} item(s); index {index} is past its end (index "
                              f"{len(node)} appends an item)")
        new = list(node)
        new[index:index + 1] = [_put(node[index] if index < len(node) else None, parts[1:], kinds[1:], value, label,
                                     done + [head])]
        return new
    if not isinstance(node, dict):
        raise ConfigError(f"{label}: {at} is {_short(node)}, not a mapping; write it as a mapping to set {head!r}")
    return {**node, head: _put(node.get(head), parts[1:], kinds[1:], value, label, done + [head])}


def parse_value(text: str, tp: Any, label: str) -> Any:
    """A command-line value for a field of type ``tp``: YAML (``3e-3``, ``null``, ``[a, b]``, ``{k: v}``), except
    that a field taking strings keeps the text as typed (``--set name=2015``), and ``none`` is null where null is
    allowed. Values holding no dataclass are type-checked here, so the error names ``label`` (the flag)."""
    if text.strip().lower() == "none" and type(None) in (_union_args(tp) or ()):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not a YAML value ({_one_line(getattr(exc, 'problem', None) or exc)}); quote "
                          "it") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{label}: {_one_line(exc)}") from None
    if value is not None and not isinstance(value, (str, list, dict)) and _accepts_str(tp):
        return text.strip()
    if not _holds_dataclass(tp) and "${" not in str(value):  # templates are checked once filled in
        _convert(tp, value, label)
    return value


def parse_flag(tp: Any, given: Any, label: str) -> Any:
    """What an option generated for a field of type ``tp`` (``FieldDoc.shape``) gave: a string, a list of strings
    (one per item), or a switch's bool."""
    if isinstance(given, list):
        item = (typing.get_args(_strip_none(tp)) or (Any,))[0]
        return [parse_value(text, item, label) for text in given]
    return parse_value(given, tp, label) if isinstance(given, str) else given


def parse_overrides(cls: type, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` strings -> ``{dotted key: value}``, each key checked against ``cls`` (with a "did you
    mean") and each value parsed for its field (``parse_value``). ``vars.NAME=VALUE`` sets a template variable."""
    found = {}
    for item in items:
        label = f"--set {_short(item)[1:-1]}"
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"{label}: write KEY=VALUE, e.g. --set lr=3e-3 or --set server.endpoint=URL")
        if key == VARS or key.startswith(VARS + "."):
            if not _NAME.match(key[len(VARS) + 1:]):
                raise ConfigError(f"{label}: write --set vars.NAME=VALUE (NAME: letters, digits and '_')")
            found[key] = parse_value(text, Any, label)
        else:
            found[key] = parse_value(text, _path_types(cls, key.split("."), label)[-1], label)
    return found


def resolve_config(cls: type[T], data: dict, overrides: list[str] | dict[str, Any] = (), vars: dict | None = None,
                   where: str | None = None) -> T:
    """Config ``cls`` from a mapping (a file's, or a fragment of a pipeline config): its ``vars:`` block taken out,
    ``overrides`` applied (``--set`` strings, or ``{dotted key: value}``), every ``${name}`` filled in, validated.

    Variables, the first found wins: ``vars.NAME`` overrides, then ``vars``, then the mapping's ``vars:`` block,
    then the environment."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_short(data)}")
    sets = dict(overrides) if isinstance(overrides, dict) else parse_overrides(cls, overrides)
    data = dict(data)
    declared = data.pop(VARS, None) or {}
    if not isinstance(declared, dict) or not all(isinstance(k, str) and _NAME.match(k) for k in declared):
        raise ConfigError(f"{where}: `vars:` must map names (letters, digits and '_') to values, got "
                          f"{_short(declared)}")
    prefix = VARS + "."
    values = {**declared, **(vars or {}), **{k[len(prefix):]: v for k, v in sets.items() if k.startswith(prefix)}}
    data = substitute(data, values, where)
    for key, value in sets.items():
        if key == VARS:
            raise ConfigError(f"setting {VARS!r}: set each variable as vars.NAME")
        if not key.startswith(prefix):
            parts = str(key).split(".")
            label = f"setting {_key(key)}"
            data = _put(data, parts, _path_types(cls, parts, label), substitute(value, values, label), label, [])
    return from_dict(cls, data, where)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict[str, Any] = (),
                vars: dict | None = None) -> T:
    """Config ``cls`` from an optional YAML file, with overrides and template variables (``resolve_config``)."""
    data = read_yaml(path) if path else {}
    return resolve_config(cls, data, overrides, vars, f"{path}: {cls.__name__}" if path else cls.__name__)


load = load_config  # the trainer's name for it


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
