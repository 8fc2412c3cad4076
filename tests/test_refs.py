"""Names, references and file paths: what is accepted, and that refusals name the rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeltrail.core.refs import (
    LATEST,
    NAME_PATTERN,
    Ref,
    check_alias,
    check_file_path,
    check_name,
    version_index,
)
from modeltrail.errors import InvalidName

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")


@given(
    namespace=st.none() | names, name=names, selector=st.sampled_from([LATEST, "v0", "v12", "prod"])
)
def test_a_reference_prints_back_to_what_parses(
    namespace: str | None, name: str, selector: str
) -> None:
    ref = Ref(namespace, name, selector)
    assert Ref.parse(str(ref)) == ref


def test_a_reference_without_selector_means_latest() -> None:
    assert Ref.parse("ns/model") == Ref("ns", "model", LATEST)
    assert Ref.parse("model:production").resolved("me") == Ref("me", "model", "production")


NAME_RULE = f"names match {NAME_PATTERN}"
SHAPE_RULE = "references look like [namespace/]name[:selector]"


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("", NAME_RULE),
        ("a b", NAME_RULE),
        ("-lead", NAME_RULE),
        (".hidden", NAME_RULE),
        ("x" * 129, NAME_RULE),
        ("ü", NAME_RULE),
        ("a/b/c", SHAPE_RULE),
        ("m:v1:v2", SHAPE_RULE),
        ("m:", SHAPE_RULE),
    ],
)
def test_invalid_references_are_refused_naming_the_rule(bad: str, rule: str) -> None:
    with pytest.raises(InvalidName) as info:
        Ref.parse(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert rule in message


def test_name_errors_quote_the_value_and_the_pattern() -> None:
    with pytest.raises(InvalidName, match=r"'a b'.*names match") as info:
        check_name("a b", "model name")
    assert NAME_PATTERN in str(info.value)


@pytest.mark.parametrize("alias", ["latest", "v0", "v17"])
def test_reserved_aliases_cannot_be_set_by_hand(alias: str) -> None:
    with pytest.raises(InvalidName, match="reserved"):
        check_alias(alias)


def test_version_labels() -> None:
    assert version_index("v0") == 0
    assert version_index("v42") == 42
    assert version_index("v01") is None
    assert version_index("production") is None


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "a/../../etc/passwd",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/.",
        "nul\x00byte",
        "C:/x",
        "a\\b",
        "",
    ],
)
def test_file_paths_that_escape_or_are_ambiguous_are_refused(path: str) -> None:
    with pytest.raises(InvalidName, match="file name"):
        check_file_path(path)


@pytest.mark.parametrize("path", ["model.bin", "weights/layer1.pt", "a.b/c-d/e_f.json", "..data"])
def test_plain_relative_paths_are_accepted(path: str) -> None:
    assert check_file_path(path) == path
