"""The data contract module and typed configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pytest

from trait.config import ConfigError, field, from_dict
from trait.contract import (
    BASE_SCHEMA,
    QUARANTINE_SCHEMA,
    ContractError,
    doc_id,
    finished_dataset,
    part_name,
    score_column,
    validate_quarantine_schema,
    validate_table,
    write_text_dataset,
)


def test_doc_id_is_a_stable_sha1_of_source_and_key():
    # Pinned: ids must never change between releases or Python processes (no salted hash()). The value is
    # sha1 of b"wiki/enwiki-2015\x00id:12", as `printf 'wiki/enwiki-2015\0id:12' | sha1sum` prints.
    assert doc_id("wiki/enwiki-2015", "id:12") == "bc43e323c6e44081fdfb81b17ad6c2e664f1d75c"
    assert doc_id("wiki/enwiki-2015", "id:12") != doc_id("wiki/other", "id:12")
    assert len(doc_id("s", "text:é")) == 40


def test_score_column_and_part_names():
    assert score_column("domain_math", 1) == "score_domain_math_v1"
    with pytest.raises(ContractError, match="lower-case"):
        score_column("Domain-Math", 1)
    assert part_name(7) == "part-00007.parquet"


def _table(**overrides):
    data = {"id": ["a"], "source": ["s"], "text": ["hello"], "url": [None], "n_tokens": [1]}
    data.update(overrides)
    return pa.table(data, schema=BASE_SCHEMA.remove(0).insert(0, pa.field("id", pa.string())))


def test_validate_table_accepts_a_contract_table_and_names_what_is_wrong():
    validate_table(_table())
    with pytest.raises(ContractError, match="column 'n_tokens' not found; columns are: id, source, text, url"):
        validate_table(_table().drop(["n_tokens"]))
    with pytest.raises(ContractError, match="empty strings"):
        validate_table(_table(text=[""]))
    with pytest.raises(ContractError, match="null values"):
        validate_table(_table(text=[None]))
    bad_type = _table().append_column("score_x_v1", pa.array([0.5], pa.float64()))
    with pytest.raises(ContractError, match="expected float"):
        validate_table(bad_type)


def test_finished_dataset_refuses_an_unfinished_directory(tmp_path):
    (tmp_path / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(ContractError, match="not a finished dataset"):
        finished_dataset(str(tmp_path))


@pytest.mark.parametrize("version", ["absent", 1, "1.4", 1.0])
def test_readers_take_contract_version_1(tmp_path, version):
    path = write_text_dataset(tmp_path / "d", "s", ["hello there"])
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["contract_version"] == 1  # what a writer puts there
    if version == "absent":  # manifests written before the key existed
        del manifest["contract_version"]
    else:
        manifest["contract_version"] = version
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    assert finished_dataset(path).count_rows() == 1


@pytest.mark.parametrize("text, message", [
    (json.dumps({"contract_version": 2}), "written under data contract version 2; this TRAIT reads version 1"),
    (json.dumps({"contract_version": "2.0"}), "written under data contract version '2.0'"),
    (json.dumps({"contract_version": "v1"}), "written under data contract version 'v1'"),
    (json.dumps({"contract_version": None}), "written under data contract version None"),
    (json.dumps({"contract_version": True}), "written under data contract version True"),
    ("[1]", "is a JSON list, not an object"),
    ("{", "is not valid JSON"),
])
def test_readers_refuse_another_major_contract_version(tmp_path, text, message):
    path = write_text_dataset(tmp_path / "d", "s", ["hello there"])
    (tmp_path / "d" / "manifest.json").write_text(text)
    with pytest.raises(ContractError, match=message):
        finished_dataset(path)


def test_quarantine_schema_is_checked():
    validate_quarantine_schema(QUARANTINE_SCHEMA)
    with pytest.raises(ContractError, match="quarantine column 'raw' has type string, the contract says binary"):
        validate_quarantine_schema(QUARANTINE_SCHEMA.set(4, pa.field("raw", pa.string())))
    with pytest.raises(ContractError, match="quarantine column 'reason' not found"):
        validate_quarantine_schema(QUARANTINE_SCHEMA.remove(2))


@dataclass
class Inner:
    path: str = field(help="a path")
    limit: int | None = field(None, help="a limit")

    @classmethod
    def from_str(cls, path):
        return cls(path=path)


@dataclass
class Outer:
    items: list[Inner] = field(help="items")
    ratio: float = field(1.0, help="a ratio")


def test_config_rejects_unknown_keys_with_a_suggestion_and_checks_types():
    cfg = from_dict(Outer, {"items": ["a", {"path": "b", "limit": 3}], "ratio": 2})
    assert cfg.items == [Inner("a"), Inner("b", 3)] and cfg.ratio == 2.0
    with pytest.raises(ConfigError, match="unknown key 'ratoi'; did you mean 'ratio'"):
        from_dict(Outer, {"items": [], "ratoi": 1})
    with pytest.raises(ConfigError, match=r"items\[0\]: unknown key 'pth'; did you mean 'path'"):
        from_dict(Outer, {"items": [{"pth": "x"}]})
    with pytest.raises(ConfigError, match="expected float"):
        from_dict(Outer, {"items": [], "ratio": "high"})
    with pytest.raises(ConfigError, match="missing required key 'items'"):
        from_dict(Outer, {})
