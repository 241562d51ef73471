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

from .fields import (
    ConfigError,
    FieldDoc,
    describe,
    field,
    from_dict,
    show,
    to_dict,
    type_name,
)
from .loading import (
    VARS,
    load,
    load_config,
    parse_flag,
    parse_overrides,
    parse_value,
    read_yaml,
    resolve_config,
    substitute,
)

__all__ = ["VARS", "ConfigError", "FieldDoc", "describe", "field", "from_dict", "load", "load_config", "parse_flag",
           "parse_overrides", "parse_value", "read_yaml", "resolve_config", "show", "substitute", "to_dict",
           "type_name"]
