"""Where a config's values come from: a YAML file, ``--set``-style overrides and ``${name}`` templates, resolved
into a validated dataclass (``load_config``, ``resolve_config``); see docs/configuration.md."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from .fields import (
    ConfigError,
    T,
    _convert,
    _key,
    _one_line,
    _short,
    _strip_none,
    _suggest,
    _union_args,
    from_dict,
    type_name,
)

VARS = "vars"  # the reserved top-level key of a config file holding its template variables
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")  # ${name}; $${name} is the literal text ${name}


# --- files, templates and overrides --------------------------------------------------------------------------------

def _accepts_str(tp: Any) -> bool:
    """Whether a string is a complete value of ``tp``: str, a path, or a dataclass with a ``from_str`` form."""
    return any(a in (str, Path) or dataclasses.is_dataclass(a) and hasattr(a, "from_str")
               for a in (_union_args(tp) or (tp,)))


def _holds_dataclass(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(_holds_dataclass(a) for a in typing.get_args(tp))


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


