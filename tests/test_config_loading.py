"""The one config loader: YAML files and their mistakes, number strings, --set overrides, ${var} templates, and a
property test that nothing but a UserError ever leaves it."""

from __future__ import annotations

import atexit
import dataclasses
import math
import shutil
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trait import UserError
from trait.cli import COMMANDS
from trait.config import (
    ConfigError,
    describe,
    field,
    from_dict,
    load_config,
    parse_overrides,
    read_yaml,
    resolve_config,
    show,
    substitute,
)


@dataclass
class Server:
    endpoint: str | None = field(None, help="base URL")
    retries: int = field(2, help="retries")


@dataclass
class Item:
    path: str = field(help="a path")
    weight: float = field(1.0, help="a weight")

    @classmethod
    def from_str(cls, text: str) -> Item:
        return cls(path=text)


@dataclass
class Job:
    name: str = field(help="a name")
    lr: float = field(0.5, help="learning rate")
    budget: int | None = field(None, help="tokens")
    items: list[Item] = field(default_factory=list, help="items")
    server: Server = field(default_factory=Server, help="the server")
    sampling: dict = field(default_factory=dict, help="sampling fields")
    tags: list[str] = field(default_factory=list, help="tags")


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- files ---------------------------------------------------------------------------------------------------------

def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\nlr: 0.5\nitems: [a, b\nbudget: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, bad)
    message = str(err.value)
    assert message.startswith(f"{bad}:4:7: YAML syntax error: ") and "\n" not in message
    tab = write(tmp_path / "tab.yaml", "name: x\n\tlr: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^{tab}:2:1: YAML syntax error: found character '\\t'"):
        load_config(Job, tab)


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "the top level must be a mapping of keys to values (e.g. `lr: 0.5`), got a list: ['a', 'b']"),
    ("3\n", "the top level must be a mapping of keys to values (e.g. `lr: 0.5`), got a scalar: 3"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9); save the file as UTF-8"),
    ("name: \x00\n", "character '\\x00' at offset 6 is not allowed in YAML; remove it"),
    ("when: 2015-13-45\n", "month must be in 1..12"),
])
def test_a_file_that_is_not_a_mapping_of_utf8_yaml_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(Job, write(tmp_path / "c.yaml", text))
    assert str(err.value) == f"{tmp_path / 'c.yaml'}: {message}"


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"^config file {tmp_path / 'nope.yaml'} not found$"):
        load_config(Job, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"^config {tmp_path} is a directory; give a YAML file$"):
        load_config(Job, tmp_path)
    assert read_yaml(write(tmp_path / "empty.yaml", "# nothing\n")) == {}


# --- values --------------------------------------------------------------------------------------------------------

def test_number_strings_yaml_reads_as_strings_are_numbers_where_the_field_is_one(tmp_path):
    # YAML 1.1 wants a dot and a signed exponent in a float: 3e-3 and 1e6 are strings to PyYAML.
    assert yaml.safe_load("lr: 3e-3") == {"lr": "3e-3"}
    cfg = load_config(Job, write(tmp_path / "j.yaml", "name: x\nlr: 3e-3\nbudget: 1e6\n"))
    assert cfg.lr == 0.003 and cfg.budget == 1_000_000 and isinstance(cfg.budget, int)
    assert from_dict(Job, {"name": "x", "lr": "-2.5E+2", "budget": "2.5e3"}) == Job("x", lr=-250.0, budget=2500)
    assert from_dict(Job, {"name": "1e3"}).name == "1e3"  # a string field keeps its text
    for value, message in [("abc", "expected float, got 'abc'; write a number such as 0.5 or 3e-3"),
                           ("inf", "expected float, got 'inf'"), (math.inf, "expected a finite number, got inf"),
                           (math.nan, "expected a finite number, got nan"), (True, "expected float, got True"),
                           (10**400, "1000.*000 is too large for a float")]:
        with pytest.raises(ConfigError, match=f"^Job.lr: {message}"):
            from_dict(Job, {"name": "x", "lr": value})
    for value in ("1.5", "1e40", ".nan", 2.5):
        with pytest.raises(ConfigError, match="^Job.budget: "):
            from_dict(Job, {"name": "x", "budget": yaml.safe_load(value) if isinstance(value, str) else value})


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_written_in_yaml_reads_back_exactly(x):
    assert load_config_text(f"name: n\nlr: {x!r}\n").lr == x


# --- overrides -----------------------------------------------------------------------------------------------------

def test_set_reaches_nested_fields_and_list_items():
    base = {"name": "x", "items": ["a", {"path": "b", "weight": 2}]}
    cfg = resolve_config(Job, base, ["lr=3e-3", "server.endpoint=http://h:8000/v1", "items.1.weight=0.5",
                                     "items.2.path=c", "items.0=z", "sampling.top_p=0.9", "tags=[x, '2']",
                                     "name=2015", "budget=none"])
    assert cfg == Job(name="2015", lr=0.003, items=[Item("z"), Item("b", 0.5), Item("c")],
                      server=Server("http://h:8000/v1"), sampling={"top_p": 0.9}, tags=["x", "2"])
    assert base == {"name": "x", "items": ["a", {"path": "b", "weight": 2}]}  # the caller's mapping is not changed
    # A YAML alias shared by two keys: setting one leaves the other.
    shared = yaml.safe_load("name: x\nitems: [&i {path: a}, *i]\n")
    assert [i.path for i in resolve_config(Job, shared, ["items.1.path=b"]).items] == ["a", "b"]


@pytest.mark.parametrize("item, message", [
    ("lrr=1", "--set lrr=1: unknown key 'lrr'; did you mean 'lr'?"),
    ("server.endpont=u", "--set server.endpont=u: unknown key 'endpont' in server; did you mean 'endpoint'?"),
    ("server.x.y=1", "--set server.x.y=1: unknown key 'x' in server; known keys: endpoint, retries"),
    ("items.first.path=a", "--set items.first.path=a: items is a list; address an item by its index, e.g. "
                           "items.0.path"),
    ("lr.x=1", "--set lr.x=1: lr is a float; it has no key 'x'"),
    ("lr=abc", "--set lr=abc: expected float, got 'abc'; write a number such as 0.5 or 3e-3"),
    ("lr", "--set lr: write KEY=VALUE, e.g. --set lr=3e-3 or --set server.endpoint=URL"),
    ("tags=[a", "--set tags=[a: not a YAML value (expected ',' or ']', but got '<stream end>'); quote it"),
    ("vars.a-b=1", "--set vars.a-b=1: write --set vars.NAME=VALUE (NAME: letters, digits and '_')"),
])
def test_set_mistakes_name_the_override(item, message):
    with pytest.raises(ConfigError) as err:
        parse_overrides(Job, [item])
    assert str(err.value) == message


def test_set_into_what_is_not_there_yet():
    with pytest.raises(ConfigError, match=r"^setting items.3.path: items has 1 item\(s\); index 3 is past its end "
                                          r"\(index 1 appends an item\)$"):
        resolve_config(Job, {"name": "x", "items": ["a"]}, ["items.3.path=b"])
    with pytest.raises(ConfigError, match="^setting items.0.weight: items.0 is 'a', not a mapping; write it as a "
                                          "mapping to set 'weight'$"):
        resolve_config(Job, {"name": "x", "items": ["a"]}, ["items.0.weight=2"])
    # Given as a dict (the pipeline's form), values are taken as they are.
    assert resolve_config(Job, {}, {"name": "n", "server.retries": 5}).server.retries == 5


# --- templates -----------------------------------------------------------------------------------------------------

def test_vars_come_from_set_then_the_caller_then_the_file_then_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path / "t.yaml", "vars: {work: from_file, n: 7}\nname: ${work}/a\nbudget: ${n}\n"
                                      "items: ['${HOME_FOR_TEST}/x', '$${literal}']\n")
    monkeypatch.setenv("HOME_FOR_TEST", "/env")
    cfg = load_config(Job, path)
    assert (cfg.name, cfg.budget, [i.path for i in cfg.items]) == ("from_file/a", 7, ["/env/x", "${literal}"])
    assert load_config(Job, path, vars={"work": "arg"}).name == "arg/a"
    assert load_config(Job, path, ["vars.work=set", "vars.n=9"], vars={"work": "arg"}).budget == 9
    assert load_config(Job, path, ["vars.work=set"], vars={"work": "arg"}).name == "set/a"
    # Override values are templated too.
    assert load_config(Job, path, ["server.endpoint=http://${work}:1"]).server.endpoint == "http://from_file:1"


def test_an_undefined_or_malformed_var_is_named_with_its_key(tmp_path):
    path = write(tmp_path / "t.yaml", "name: x\nitems: [{path: '${nowhere_defined}/x'}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, path)
    assert str(err.value) == (f"{path}: Job.items[0].path: ${{nowhere_defined}} is not defined; set it in the "
                              "config's `vars:` block, with --set vars.nowhere_defined=VALUE, or as an environment "
                              "variable")
    with pytest.raises(ConfigError, match=r"Job.name: \$\{a b\}: a variable name is letters, digits and '_'"):
        resolve_config(Job, {"name": "${a b}"})
    with pytest.raises(ConfigError, match=r"Job.name: \$\{l\} is a list; it can only stand alone as a whole value"):
        resolve_config(Job, {"name": "x${l}", "vars": {"l": [1]}})
    with pytest.raises(ConfigError, match="`vars:` must map names"):
        resolve_config(Job, {"name": "x", "vars": ["a"]})


def test_substitute_fills_a_fragment_and_leaves_it_unchanged():
    fragment = {"a": ["${x}", {"b": "p/${x}"}], "c": 1}
    assert substitute(fragment, {"x": 5}) == {"a": [5, {"b": "p/5"}], "c": 1}
    assert fragment == {"a": ["${x}", {"b": "p/${x}"}], "c": 1}


def test_the_demo_configs_run_alone_and_inside_the_demo(tmp_path):
    from spark_jobs.classifier import ClassifierConfig
    from spark_jobs.demo import CONFIGS
    from spark_jobs.ingest import IngestConfig

    alone = load_config(ClassifierConfig, CONFIGS / "classifier_domain.yaml")  # the file's vars: runs/demo
    assert alone.positives[0].path == "runs/demo/seed"
    inside = load_config(ClassifierConfig, CONFIGS / "classifier_quality.yaml", vars={"work": str(tmp_path)})
    assert {r.path for r in inside.positives + inside.negatives} == {f"{tmp_path}/seed", f"{tmp_path}/pool"}
    pool = load_config(IngestConfig, CONFIGS / "ingest_pool.yaml", vars={"data": "/d"})
    assert all(i.path.startswith("/d/corpora/general/") for i in pool.inputs)


# --- field list ----------------------------------------------------------------------------------------------------

def test_describe_lists_nested_fields_by_dotted_key():
    docs = {d.key: d for d in describe(Job)}
    assert list(docs) == ["name", "lr", "budget", "items", "items.N.path", "items.N.weight", "server",
                          "server.endpoint", "server.retries", "sampling", "tags"]
    assert docs["name"].default is dataclasses.MISSING and docs["server.retries"].default == 2
    assert [docs[k].shape for k in ("lr", "budget", "items", "server", "sampling", "tags")] == \
        ["value", "value", "list", None, None, "list"]
    assert show({"a": [1, None], "b": "x"}) == "{a: [1, null], b: x}" and show("") == "''"


# --- property: only UserErrors leave the loader --------------------------------------------------------------------

CONFIG_CLASSES = sorted({c.config_class() for c in COMMANDS.values()}, key=lambda c: c.__name__)
_TMP = Path(tempfile.mkdtemp(prefix="trait-config-test-"))  # for hypothesis's examples, which take no tmp_path
atexit.register(shutil.rmtree, _TMP, True)


def load_config_text(text: str | bytes, cls: type = Job, sets: list[str] = ()):
    return load_config(cls, write(_TMP / "config.yaml", text), sets)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=12),
                    st.sampled_from(["3e-3", "1e6", "inf", "nan", "-0", "abc", "${x}", "${nope}", "none", "[]"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)


def typed(tp) -> st.SearchStrategy:
    """Values of type ``tp``, edge values often (0, -1, empty, huge): these reach the configs' validate()."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return st.one_of(st.none(), *(typed(a) for a in args))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-3, 3) | st.sampled_from([10**12, -(10**12), "1e6", "2.5"])
    if tp is float:
        return st.floats(-2, 2) | st.sampled_from([0.0, 1.0, 100.0, 1e300, "3e-3", "1e-400", "-.5"])
    if tp in (str, Path):
        return st.sampled_from(["", "x", "score_x_v1", "a/b.jsonl", "auto", "json", "none", "${x}"]) | st.text(
            max_size=5)
    if typing.get_origin(tp) in (list, tuple):
        return st.lists(typed(args[0]), max_size=3)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.fixed_dictionaries({}, optional={f.name: typed(hints[f.name]) for f in dataclasses.fields(tp)})
    return values  # dict, Any


@st.composite
def documents(draw):
    cls = draw(st.sampled_from(CONFIG_CLASSES))
    keys = [d.key.replace(".N.", ".0.") for d in describe(cls)]
    doc = draw(typed(cls)) if draw(st.booleans()) else {}
    for dotted in draw(st.lists(st.sampled_from(keys) | st.text(max_size=8), max_size=4)):
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:  # a dotted key becomes nested mappings (a list index too: a type error to report)
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = draw(values)
    if draw(st.booleans()):
        doc["vars"] = draw(st.dictionaries(st.sampled_from(["x", "work", "1bad"]), scalars, max_size=2))
    key = st.sampled_from(keys + ["vars.x"]) | st.sampled_from(keys) | st.text(max_size=10)
    value = st.text(max_size=10) | st.sampled_from(["3e-3", "[1, 2", "{a: 1}", "none", "1e400", "${x}", "-5", "true"])
    sets = draw(st.lists(st.builds(lambda k, eq, v: f"{k}{eq}{v}", key, st.sampled_from(["=", "=", "=", "", "=="]),
                                   value), max_size=3))
    text = yaml.safe_dump(doc, allow_unicode=True)
    mangle = draw(st.sampled_from(["none", "cut", "insert", "bytes"]))
    if mangle == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif mangle == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet=":-[]{}'\"\t\n #&*!|>%@`,?", max_size=3)) + text[at:]
    elif mangle == "bytes":
        return cls, draw(st.binary(max_size=40)), sets
    return cls, text, sets


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_the_loader_raises_nothing_but_user_errors(case):
    cls, text, sets = case
    try:
        load_config_text(text, cls, sets)
    except UserError as exc:
        assert "\n" not in str(exc), str(exc)  # one line
