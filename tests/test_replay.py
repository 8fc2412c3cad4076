"""Replay: random command sequences always rebuild to the same state.

Commands are drawn from small pools of names so that they collide (existing models,
moved aliases, identical manifests, refused moves); those that address a version pick it
among the versions (and links) that exist when they run, and a compare-and-set expects
the alias's current target half of the time, so moves, links and unlinks succeed as often
as they are refused. Whatever they do, the projections built live, the projections
rebuilt from position 0, and a fresh registry fed the same events must export the same
bytes. ``--hypothesis-show-statistics`` shows how often each command succeeded.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import modeltrail as mt
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.entities import Link
from modeltrail.errors import ModeltrailError, NotFound
from tests.conftest import ManualClock

MODELS = ["m1", "m2", "shared"]
ALIASES = ["prod", "staging"]
ACTORS = ["alice", "bob"]
REGISTERED = "reg"

Registries = dict[str, mt.Registry]
Op = Callable[[Registries], object]


def _labels(reg: mt.Registry, model: str) -> list[str]:
    try:
        return [v.label for v in reg.versions(model)]
    except NotFound:
        return []


def _version(reg: mt.Registry, model: str, pick: int) -> tuple[str, str]:
    """A model that has versions (the drawn one when it has some) and one of its labels;
    the drawn model and a label it lacks when no model has a version yet."""
    for name in [model, *(m for m in MODELS if m != model)]:
        labels = _labels(reg, name)
        if labels:
            return name, labels[pick % len(labels)]
    return model, f"v{pick % 4}"


def _with_alias(reg: mt.Registry, model: str, alias: str) -> str:
    """A model on which the alias is set (the drawn one when it is), else the drawn one."""
    for name in [model, *(m for m in MODELS if m != model)]:
        with contextlib.suppress(NotFound):
            if alias in reg.model(name).aliases:
                return name
    return model


def _links(reg: mt.Registry) -> list[Link]:
    try:
        return reg.links(REGISTERED)
    except NotFound:
        return []


def _cas(reg: mt.Registry, model: str, alias: str, pick: int, stale: bool) -> None:
    """Compare-and-set with the alias's current target as the expectation, or (`stale`)
    with another version of the model."""
    model = _with_alias(reg, model, alias)
    model, label = _version(reg, model, pick)
    labels = _labels(reg, model)
    current = reg.model(model).aliases.get(alias) if labels else None
    expected = current
    if stale or current is None:
        others = [other for other in labels if other != current] or ["v0"]
        expected = others[pick % len(others)]
    reg.set_alias(f"{model}:{label}", alias, expected=expected)


def _unlink(reg: mt.Registry, pick: int) -> None:
    links = _links(reg)
    reg.unlink(links[pick % len(links)].ref if links else "m1:v0", REGISTERED)


def _registered_alias(reg: mt.Registry, alias: str, pick: int) -> None:
    links = _links(reg)
    label = links[pick % len(links)].label if links else f"v{pick % 4}"
    reg.set_alias(f"{REGISTERED}:{label}", alias)


def _op(draw: st.DrawFn, names: Sequence[str] | None = None) -> tuple[str, Op]:
    actor = draw(st.sampled_from(ACTORS))
    model = draw(st.sampled_from(MODELS))
    index = draw(st.integers(0, 3))
    pick = draw(st.integers(0, 63))  # chooses among what exists when the op runs
    stale = draw(st.booleans())
    alias = draw(st.sampled_from(ALIASES))
    content = draw(st.binary(min_size=1, max_size=2))

    def at(r: Registries) -> tuple[str, str]:
        return _version(r[actor], model, pick)

    choices: dict[str, Op] = {
        "log": lambda r: r[actor].log_version(model, {"w": content}, metadata={"i": index}),
        "log-aliased": lambda r: r[actor].log_version(model, {"w": content}, aliases=[alias]),
        "create": lambda r: r[actor].create_model(model, arch_hash=f"arch{index % 2}"),
        "arch": lambda r: r[actor].log_version(model, {"w": content}, arch_hash=f"arch{index % 2}"),
        "alias": lambda r: r[actor].set_alias("{}:{}".format(*at(r)), alias),
        "cas": lambda r: _cas(r[actor], model, alias, pick, stale),
        "unalias": lambda r: r[actor].remove_alias(_with_alias(r[actor], model, alias), alias),
        "link": lambda r: r[actor].link("{}:{}".format(*at(r)), REGISTERED, aliases=[alias]),
        "unlink": lambda r: _unlink(r[actor], pick),
        "reg-alias": lambda r: _registered_alias(r[actor], alias, pick),
        "run": lambda r: r[actor].run(model, f"run{index % 2}", config={"lr": index % 3}),
        "metrics": lambda r: (
            r[actor]
            .run(model, "run0", config={"lr": 0})
            .log_metrics({"loss": index / 3}, step=index)
        ),
        "tags": lambda r: r[actor].set_tags(model, {"k": str(index)}),
        "quota": lambda r: r[actor].set_quota("ns", index or None),
        "download": lambda r: r[actor].download(
            "{}:{}".format(*at(r)), r["_tmp"].settings.home / "dl"
        ),
    }
    name = draw(st.sampled_from(sorted(names or choices)))
    return name, choices[name]


# Every sequence starts with a version, so no log is empty and the later ops find one.
operations = st.tuples(
    st.composite(_op)(names=["log"]), st.lists(st.composite(_op)(), max_size=24)
).map(lambda ops: [ops[0], *ops[1]])


def _run(ops: list[tuple[str, Op]], home: Path) -> mt.Registry:
    clock = ManualClock()
    registries = {a: mt.open(home, actor=a, namespace="ns", clock=clock) for a in ACTORS}
    registries["_tmp"] = registries["alice"]
    for name, op in ops:
        head = registries["alice"].head()
        try:
            op(registries)
        except ModeltrailError:
            assert registries["alice"].head() == head  # a refusal leaves no trace
            event(f"{name}: refused")
        else:
            event(name)
    return registries["alice"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_a_rebuild_from_position_zero_equals_the_live_projections(
    ops: list[tuple[str, Op]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reg = _run(ops, Path(tmp))
        live = reg.export()
        assert reg.verify().ok
        reg.rebuild()
        assert reg.export() == live


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.data())
def test_as_of_a_position_equals_a_registry_built_from_that_prefix(
    ops: list[tuple[str, Op]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        reg = _run(ops, Path(tmp) / "full")
        head = reg.head()
        position = data.draw(st.integers(0, head))
        past = reg.as_of(position).export()

        prefix = Engine(Database(f"sqlite:///{Path(tmp) / 'prefix.db'}"))
        prefix.prepare()
        events = list(reg.events(until=position))
        if events:
            prefix.log.append(events)  # the same events, appended by a plain log writer
        prefix.catch_up()  # …and folded by the catch-up path instead of as_of's
        from modeltrail.core.projections.runner import export

        assert list(export(prefix.database.reader(), prefix.runner.specs)) == past
