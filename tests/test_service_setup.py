"""Setting up the test servers on a fresh machine: what scripts/services.py installs, and
how an optional package a test needs is required (no server is started here)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.services import REQUIRE_ENV, _services, require_package


def test_a_missing_optional_package_skips_unless_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert require_package("json") is json
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_package_here is not installed"):
        require_package("no_such_package_here")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no_such_package_here is not installed"):
        require_package("no_such_package_here")


class Machine:
    """A fresh machine as scripts/services.py sees it: which tools are on PATH, whether
    we are root, which packages apt knows; the commands it would run are recorded."""

    def __init__(self, services: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        self.services = services
        self.on_path: dict[str, str] = {"apt-get": "/usr/bin/apt-get"}
        self.root = True
        self.apt_knows = {"openjdk-17-jre-headless", "default-jre-headless", "maven"}
        self.installs = {"openjdk-17-jre-headless": "java", "maven": "mvn"}
        self.java_says = 'openjdk version "17.0.15" 2025-04-15'
        self.ran: list[list[str]] = []
        monkeypatch.setattr(services.shutil, "which", self.which)
        monkeypatch.setattr(services.os, "geteuid", lambda: 0 if self.root else 1000)
        monkeypatch.setattr(services, "_run", self.run)
        monkeypatch.setattr(services, "_apt_knows", lambda name, _env: name in self.apt_knows)
        monkeypatch.setattr(services, "_JAVA", [])

    def which(self, name: str) -> str | None:
        return self.on_path.get(name)

    def run(self, cmd: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.ran.append(list(cmd))
        if cmd[:2] == ["apt-get", "install"]:
            tool = self.installs[cmd[-1]]
            self.on_path[tool] = f"/usr/bin/{tool}"
        stderr = self.java_says if cmd[-1] == "-version" else ""
        return subprocess.CompletedProcess(list(cmd), 0, "", stderr)

    def installed(self) -> list[str]:
        return [cmd[-1] for cmd in self.ran if cmd[:2] == ["apt-get", "install"]]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Machine]:
    monkeypatch.setenv("MODELTRAIL_CACHE", str(tmp_path / "cache"))  # no Kafka jars yet
    yield Machine(_services(), monkeypatch)


def test_java_is_installed_with_apt_get_as_root(machine: Machine) -> None:
    assert machine.services.java_binary() == "/usr/bin/java"
    assert machine.installed() == ["openjdk-17-jre-headless"]
    install = next(cmd for cmd in machine.ran if cmd[:2] == ["apt-get", "install"])
    assert "-y" in install  # non-interactive
    assert ["apt-get", "update", "-q"] in machine.ran


def test_the_first_java_package_apt_knows_is_chosen(machine: Machine) -> None:
    machine.apt_knows = {"default-jre-headless"}
    machine.installs["default-jre-headless"] = "java"
    machine.services.java_binary()
    assert machine.installed() == ["default-jre-headless"]


def test_without_root_a_missing_java_names_the_packages(machine: Machine) -> None:
    machine.root = False
    with pytest.raises(machine.services.ServiceError, match="openjdk-17-jre-headless") as info:
        machine.services.java_binary()
    assert "sudo apt-get install openjdk-17-jre-headless" in str(info.value)
    assert machine.ran == []


def test_an_old_java_is_refused_with_the_version_it_is(machine: Machine) -> None:
    machine.on_path["java"] = "/usr/bin/java"
    machine.java_says = 'java version "1.8.0_292"'
    with pytest.raises(machine.services.ServiceError, match=r"Java 8; Kafka needs Java 17\+"):
        machine.services.java_binary()
    assert machine.installed() == []


def test_maven_is_installed_with_apt_get_as_root(machine: Machine) -> None:
    with pytest.raises(FileNotFoundError):  # the recorded Maven run fetched no jars
        machine.services.kafka_lib_dir()
    assert machine.installed() == ["maven"]
    assert any(cmd[0] == "/usr/bin/mvn" for cmd in machine.ran)


def test_without_root_a_missing_maven_names_the_package(machine: Machine) -> None:
    machine.root = False
    with pytest.raises(machine.services.ServiceError, match="install maven"):
        machine.services.kafka_lib_dir()


def test_without_root_a_missing_postgresql_names_the_package(machine: Machine) -> None:
    machine.root = False
    with pytest.raises(machine.services.ServiceError, match="install postgresql"):
        machine.services._install_postgresql()
