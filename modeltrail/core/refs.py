"""Names, references and stream identifiers.

A reference is ``[namespace/]name[:selector]``: the selector is a version label
(``v3``), an alias (``production``) or absent, which means ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modeltrail.errors import InvalidName

NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
_VERSION_LABEL = re.compile(r"v(0|[1-9][0-9]{0,8})")
LATEST = "latest"


def check_name(value: object, what: str = "name", *, within: str = "") -> str:
    """Returns ``value`` when it is a valid name, else raises InvalidName naming the rule
    (and ``within``, the reference the name came from, when there is one)."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        where = f" in reference {within!r}" if within else ""
        raise InvalidName(f"{what} {value!r}{where} is invalid: names match {NAME_PATTERN}")
    return value


METRIC_PATTERN = "[A-Za-z0-9][A-Za-z0-9._/ -]{0,249}"
_METRIC = re.compile(METRIC_PATTERN)


def check_metric_name(value: object) -> str:
    """Metric keys may also hold '/' and spaces (``train/loss``), as in W&B and MLflow."""
    if not isinstance(value, str) or _METRIC.fullmatch(value) is None or value.endswith(" "):
        raise InvalidName(f"metric name {value!r} is invalid: metric names match {METRIC_PATTERN}")
    return value


def check_alias(value: object) -> str:
    """An alias settable by hand: a valid name that is not ``latest`` nor ``v<digits>``."""
    alias = check_name(value, "alias")
    if alias == LATEST or re.fullmatch(r"v[0-9]+", alias):
        raise InvalidName(
            f"alias {alias!r} is reserved: 'latest' and 'v<digits>' are set by modeltrail itself"
        )
    return alias


def version_index(selector: str) -> int | None:
    """3 for ``v3``; None when the selector is not a version label."""
    found = _VERSION_LABEL.fullmatch(selector)
    return int(found.group(1)) if found else None


def version_label(index: int) -> str:
    return f"v{index}"


@dataclass(frozen=True)
class Ref:
    """A parsed reference; ``namespace`` is None when the caller's default applies."""

    namespace: str | None
    name: str
    selector: str = LATEST

    @classmethod
    def parse(cls, text: object) -> Ref:
        if not isinstance(text, str):
            raise InvalidName(f"reference {text!r} is invalid: references are strings")
        path, colon, selector = text.partition(":")
        namespace, slash, name = path.rpartition("/")
        if ":" in selector or "/" in namespace or (colon and not selector):
            raise InvalidName(
                f"reference {text!r} is invalid: references look like [namespace/]name[:selector]"
            )
        if selector:
            check_name(selector, "selector", within=text)
        return cls(
            check_name(namespace, "namespace", within=text) if slash else None,
            check_name(name, "name", within=text),
            selector or LATEST,
        )

    def resolved(self, default_namespace: str) -> Ref:
        return self if self.namespace else Ref(default_namespace, self.name, self.selector)

    @property
    def ns(self) -> str:
        if self.namespace is None:
            raise InvalidName(f"reference {self} has no namespace")
        return self.namespace

    def __str__(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        suffix = "" if self.selector == LATEST else f":{self.selector}"
        return f"{prefix}{self.name}{suffix}"


@dataclass(frozen=True)
class Target:
    """A model version: what a reference resolves to and what aliases and links point at."""

    namespace: str
    model: str
    index: int

    @property
    def label(self) -> str:
        return version_label(self.index)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.model}:{self.label}"


def namespace_stream(namespace: str) -> str:
    return f"namespace:{namespace}"


def model_stream(namespace: str, model: str) -> str:
    return f"model:{namespace}/{model}"


def registered_stream(namespace: str, name: str) -> str:
    return f"registered:{namespace}/{name}"


def run_stream(namespace: str, model: str, run: str) -> str:
    return f"run:{namespace}/{model}/{run}"


def inference_stream(namespace: str, model: str, run: str) -> str:
    """A run's inference batches: a stream of their own, apart from the run's other events,
    so a log may store them elsewhere (the Kafka log keeps them in their own topic)."""
    return f"inference:{namespace}/{model}/{run}"


def check_file_path(path: object) -> str:
    """A version's file name: relative, POSIX, no ``..``, no NUL, no empty parts."""
    if not isinstance(path, str) or not path:
        raise InvalidName(f"file name {path!r} is invalid: file names are non-empty strings")
    rule = "file names are relative POSIX paths without '..', '.', empty parts or NUL"
    parts = path.split("/")
    if (
        "\x00" in path
        or "\\" in path
        or path.startswith("/")
        or re.match(r"^[A-Za-z]:", path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidName(f"file name {path!r} is invalid: {rule}")
    if len(path) > 1024:
        raise InvalidName(
            f"file name {path[:40]!r}… is invalid: file names are at most 1024 characters"
        )
    return path


def personal_namespace(actor: str) -> str:
    """The namespace an actor owns: the actor's name made into a valid name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", actor).lstrip("._-")[:128]
    return name or "default"
