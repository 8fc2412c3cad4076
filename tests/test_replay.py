"""Replay: random command sequences always rebuild to the same state.

Commands are drawn from small pools of names so that they collide (existing models,
moved aliases, identical manifests, refused moves); whatever they do, the projections
built live, the projections rebuilt from position 0, and a fresh registry fed the same
events must export the same bytes.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeltrail as mt
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.errors import ModeltrailError
from tests.conftest import ManualClock

MODELS = ["m1", "m2", "shared"]
ALIASES = ["prod", "staging"]
ACTORS = ["alice", "bob"]

Op = Callable[[dict[str, mt.Registry]], object]


def _op(draw: st.DrawFn) -> tuple[str, Op]:
    actor = draw(st.sampled_from(ACTORS))
    model = draw(st.sampled_from(MODELS))
    index = draw(st.integers(0, 3))
    alias = draw(st.sampled_from(ALIASES))
    content = draw(st.binary(min_size=1, max_size=2))
    choices: dict[str, Op] = {
        "log": lambda r: r[actor].log_version(model, {"w": content}, metadata={"i": index}),
        "log-aliased": lambda r: r[actor].log_version(model, {"w": content}, aliases=[alias]),
        "create": lambda r: r[actor].create_model(model, arch_hash=f"arch{index % 2}"),
        "arch": lambda r: r[actor].log_version(model, {"w": content}, arch_hash=f"arch{index % 2}"),
        "alias": lambda r: r[actor].set_alias(f"{model}:v{index}", alias),
        "cas": lambda r: r[actor].set_alias(
            f"{model}:v{index}", alias, expected=f"v{(index + 1) % 4}"
        ),
        "unalias": lambda r: r[actor].remove_alias(model, alias),
        "link": lambda r: r[actor].link(f"{model}:v{index}", "reg", aliases=[alias]),
        "unlink": lambda r: r[actor].unlink(f"{model}:v{index}", "reg"),
        "reg-alias": lambda r: r[actor].set_alias(f"reg:v{index}", alias),
        "run": lambda r: r[actor].run(model, f"run{index % 2}", config={"lr": index % 3}),
        "metrics": lambda r: (
            r[actor]
            .run(model, "run0", config={"lr": 0})
            .log_metrics({"loss": index / 3}, step=index)
        ),
        "tags": lambda r: r[actor].set_tags(model, {"k": str(index)}),
        "quota": lambda r: r[actor].set_quota("ns", index or None),
        "download": lambda r: r[actor].download(
            f"{model}:v{index}", r["_tmp"].settings.home / "dl"
        ),
    }
    name = draw(st.sampled_from(sorted(choices)))
    return name, choices[name]


operations = st.lists(st.composite(_op)(), min_size=1, max_size=25)


def _run(ops: list[tuple[str, Op]], home: Path) -> mt.Registry:
    clock = ManualClock()
    registries = {a: mt.open(home, actor=a, namespace="ns", clock=clock) for a in ACTORS}
    registries["_tmp"] = registries["alice"]
    for _, op in ops:
        with contextlib.suppress(ModeltrailError):  # refusals must leave no trace
            op(registries)
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
