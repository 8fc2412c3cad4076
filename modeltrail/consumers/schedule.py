"""``modeltrail schedule run``: the jobs of a TOML file on APScheduler 3 triggers.

```toml
[[job]]
kind = "retention"          # purge blobs of versions without aliases
every = "1d"                # or cron = "0 3 * * *"
days = 30
namespace = "team"          # optional

[[job]]
kind = "promotion"          # move an alias when a metric passes a threshold
every = "10m"
model = "resnet18"
alias = "production"
metric = "val_acc"
threshold = 0.9
op = ">="                   # >=, >, <=, <
source = "any"              # metadata, run (its logged metrics) or any

[[job]]
kind = "snapshot"           # store the projections so replays start from there
every = "1h"
keep = 5

[[job]]
kind = "catch_up"           # fold events appended by other writers
every = "30s"
```

Jobs run one at a time (a single worker thread): a retention run and a promotion never
race each other. A run that is due while another runs is coalesced, and a job that
fails is logged and runs again at its next time.
"""

from __future__ import annotations

import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeltrail.consumers import jobs
from modeltrail.errors import InvalidInput, ModeltrailError

if TYPE_CHECKING:
    from modeltrail.registry import Registry

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_UNIT_S = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "retention": {"days": (int, float), "namespace": str, "reason": str},
    "promotion": {
        "model": str,
        "alias": str,
        "metric": str,
        "threshold": (int, float),
        "op": str,
        "source": str,
    },
    "snapshot": {"keep": int},
    "catch_up": {},
}
REQUIRED = {
    "retention": {"days"},
    "promotion": {"model", "alias", "metric", "threshold"},
    "snapshot": set(),
    "catch_up": set(),
}


@dataclass(frozen=True)
class JobSpec:
    name: str
    kind: str
    every_s: float | None = None
    cron: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def parse_duration(value: object, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    found = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or float(found.group(1)) <= 0:
        raise InvalidInput(
            f"{where}: every = {value!r} is invalid: use seconds or a duration such as "
            "'30s', '10m', '1h', '1d'"
        )
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def parse_config(data: Mapping[str, Any]) -> list[JobSpec]:
    entries = data.get("job", [])
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("the schedule config declares no jobs: add [[job]] tables")
    specs: list[JobSpec] = []
    for number, entry in enumerate(entries, start=1):
        kind = entry.get("kind")
        name = str(entry.get("name") or f"{kind}-{number}")
        where = f"job {name!r}"
        if kind not in OPTIONS:
            raise InvalidInput(
                f"{where}: kind {kind!r} is invalid: use one of {', '.join(OPTIONS)}"
            )
        if ("every" in entry) == ("cron" in entry):
            raise InvalidInput(f"{where}: give exactly one of every = … or cron = …")
        options = {k: v for k, v in entry.items() if k not in ("kind", "name", "every", "cron")}
        for key, value in options.items():
            expected = OPTIONS[kind].get(key)
            if expected is None:
                known = ", ".join(OPTIONS[kind]) or "none"
                raise InvalidInput(
                    f"{where}: option {key!r} is unknown for {kind} (known: {known})"
                )
            if not isinstance(value, expected) or isinstance(value, bool):
                raise InvalidInput(f"{where}: {key} = {value!r} has the wrong type")
        missing = REQUIRED[kind] - set(options)
        if missing:
            raise InvalidInput(f"{where}: {kind} needs {', '.join(sorted(missing))}")
        cron = entry.get("cron")
        if cron is not None:
            _cron_trigger(cron, where)
        specs.append(
            JobSpec(
                name,
                kind,
                None if "every" not in entry else parse_duration(entry["every"], where),
                cron,
                options,
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"job names {names} repeat: each job needs its own name")
    return specs


def load_config(path: Path) -> list[JobSpec]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"schedule config {str(path)!r} is not TOML: {exc}") from None
    return parse_config(data)


def job_function(registry: Registry, spec: JobSpec) -> Callable[[], Any]:
    """The call that runs ``spec`` once."""
    options = dict(spec.options)
    if spec.kind == "retention":
        return lambda: jobs.retention(registry, **options)
    if spec.kind == "promotion":
        return lambda: jobs.promote(registry, **options)
    if spec.kind == "snapshot":
        return lambda: jobs.snapshot(registry, **options)
    return lambda: jobs.catch_up(registry)


def _cron_trigger(expression: str, where: str) -> Any:
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise InvalidInput(f"{where}: cron = {expression!r} is invalid: {exc}") from None


def _trigger(spec: JobSpec) -> Any:
    from apscheduler.triggers.interval import IntervalTrigger

    if spec.cron is not None:
        return _cron_trigger(spec.cron, f"job {spec.name!r}")
    assert spec.every_s is not None
    return IntervalTrigger(seconds=spec.every_s, timezone="UTC")


def build_scheduler(
    registry: Registry,
    specs: list[JobSpec],
    *,
    log: Callable[[str], None] = lambda _line: None,
    scheduler: Any = None,
) -> Any:
    """An APScheduler 3 scheduler (a BackgroundScheduler unless given) holding the jobs,
    not yet started; each job's outcome (or error) goes to ``log``."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    if scheduler is None:
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone="UTC",
        )
    for spec in specs:
        scheduler.add_job(
            _logged(spec.name, job_function(registry, spec), log),
            trigger=_trigger(spec),
            id=spec.name,
            name=spec.name,
            replace_existing=True,
        )
    return scheduler


def _logged(name: str, run: Callable[[], Any], log: Callable[[str], None]) -> Callable[[], Any]:
    def job() -> Any:
        try:
            result = run()
        except ModeltrailError as exc:
            log(f"job {name}: {type(exc).__name__}: {exc}")
            raise
        log(f"job {name}: {result}")
        return result

    return job


def run_once(registry: Registry, specs: list[JobSpec]) -> list[tuple[str, Any]]:
    """Runs every job once, in order; returns (name, result) pairs."""
    return [(spec.name, job_function(registry, spec)()) for spec in specs]


def run_blocking(
    registry: Registry,
    specs: list[JobSpec],
    stop: threading.Event,
    *,
    log: Callable[[str], None] = lambda _line: None,
) -> None:
    """Runs the jobs on their schedules until ``stop`` is set; a running job finishes."""
    scheduler = build_scheduler(registry, specs, log=log)
    scheduler.start()
    for job in scheduler.get_jobs():
        log(f"job {job.id}: next run {job.next_run_time:%Y-%m-%d %H:%M:%S %Z}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=True)
