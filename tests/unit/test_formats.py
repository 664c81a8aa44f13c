"""repro.formats: the one stamp and the one check every file goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repro.errors import UsageError
from repro.formats import Format, check, read_json, stamp, version_of

F = Format("repro.example", 3, oldest=1, legacy_version_key="schema_version", unversioned=1)


def test_stamp_puts_schema_and_version_first_and_leaves_the_input_alone() -> None:
    doc = {"a": 1, "version": 99}
    out = stamp(F, doc)
    assert list(out)[:2] == ["schema", "version"] and out == {"schema": "repro.example", "version": 3, "a": 1}
    assert doc == {"a": 1, "version": 99}


@pytest.mark.parametrize("doc, v", [({"schema": "repro.example", "version": 2}, 2),
                                    ({"schema_version": 1, "x": 0}, 1),
                                    ({"x": 0}, 1)])
def test_older_spellings_read_as_the_version_they_were(doc: dict, v: int) -> None:
    assert version_of(F, doc, "f.json") == v


@pytest.mark.parametrize("doc, words", [({"schema": "repro.other", "version": 1}, "a repro.other file"),
                                        ({"schema": "repro.example", "version": 4}, "newer than this repro"),
                                        ({"schema": "repro.example", "version": 0}, "older than this repro"),
                                        ({"schema": "repro.example"}, "without an integer"),
                                        ([1, 2], "a JSON object expected")])
def test_a_foreign_or_future_file_is_a_one_line_usage_error(doc: object, words: str) -> None:
    with pytest.raises(UsageError) as e:
        check(F, doc, "f.json")
    assert words in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_file_without_schema_is_foreign_when_the_format_never_had_unversioned_files() -> None:
    strict = Format("repro.strict", 1)
    with pytest.raises(UsageError, match="no \"schema\" key"):
        check(strict, {"a": 1}, "f.json")


def test_read_json_turns_invalid_json_into_a_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    p.write_text("{not json")
    with pytest.raises(UsageError, match="invalid JSON"):
        read_json(F, p)
    p.write_text(json.dumps(stamp(F, {"k": 1})))
    assert read_json(F, p)["k"] == 1


def test_read_optional_is_none_for_an_absent_or_torn_file_and_still_refuses_a_future_one(tmp_path: Path) -> None:
    """A killed run leaves files absent or torn (None, never fatal); a whole future document is an error."""
    from repro.formats import read_optional

    p = tmp_path / "f.json"
    assert read_optional(F, p) is None and read_optional(F, None) is None
    p.write_text('{"schema": "repro.example", "vers')
    assert read_optional(F, p) is None
    p.write_text(json.dumps({"schema": "repro.example", "version": 9}))
    with pytest.raises(UsageError, match="newer than this repro"):
        read_optional(F, p)


def test_a_json_lines_file_reads_its_version_from_a_header_record_or_as_unversioned() -> None:
    """Records without "schema" (every file before headers) are version 1; a header record is checked."""
    from repro.formats import check_lines

    assert check_lines(F, {"t": 1.0, "event": "start"}, "e.jsonl") == 1
    assert check_lines(F, {"schema": "repro.example", "version": 2}, "e.jsonl") == 2
    with pytest.raises(UsageError, match="a repro.other file"):
        check_lines(F, {"schema": "repro.other", "version": 1}, "e.jsonl")


def test_every_catalogued_format_is_named_in_formats_md() -> None:
    """FORMATS.md documents every schema of the catalogue."""
    from repro.formats import FORMATS

    text = (Path(__file__).resolve().parents[2] / "FORMATS.md").read_text()
    assert [s for s in FORMATS if f"`{s}`" not in text] == []
