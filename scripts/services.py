#!/usr/bin/env python3
"""Start and stop real Kafka / PostgreSQL servers for tests and benchmarks.

Stdlib only, so it runs before any project dependency is installed. Both servers listen on
127.0.0.1 on free ports and keep all their data in one directory (default
``$TMPDIR/modeltrail-services-<uid>``; subdirectories ``kafka/`` and ``postgres/``).

CLI::

    eval "$(python scripts/services.py start postgres)"   # exports MODELTRAIL_TEST_PG
    eval "$(python scripts/services.py start kafka)"      # exports MODELTRAIL_TEST_KAFKA
    python scripts/services.py status
    python scripts/services.py stop all

``start`` prints only ``export`` lines on stdout; progress and timings go to stderr.

Python API (pytest fixtures, benchmarks)::

    info = start("kafka", dir=tmp)   # {"kind", "pid", "port", "dir", "url", "env", ...}
    stop("kafka", tmp)

Kafka: a single KRaft node (broker+controller) run from jars that Maven fetches once into
``${MODELTRAIL_CACHE:-~/.cache/modeltrail}/kafka-<version>/lib`` (see scripts/kafka/pom.xml).
PostgreSQL: initdb + pg_ctl from the Debian binaries, trust auth, superuser ``postgres``,
database ``modeltrail``; fsync/synchronous_commit off unless ``--durable``.

What is missing (PostgreSQL, a Java 17+ runtime, Maven) is installed with apt-get, without
questions, when this runs as root; otherwise the error names the packages to install.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

KINDS = ("kafka", "postgres")
ENV_VARS = {"kafka": "MODELTRAIL_TEST_KAFKA", "postgres": "MODELTRAIL_TEST_PG"}
HOST = "127.0.0.1"
STATE_FILE = "state.json"
# Written into every service directory we create, so a later start may wipe it safely.
OWNER_MARKER = ".modeltrail-service"
PG_DATABASE = "modeltrail"
PG_SUPERUSER = "postgres"
SCRIPTS_DIR = Path(__file__).resolve().parent
KAFKA_POM = SCRIPTS_DIR / "kafka" / "pom.xml"
# Extra JVM flags for the broker, e.g. MODELTRAIL_KAFKA_JAVA_OPTS="-Xmx1g".
KAFKA_JAVA_OPTS_ENV = "MODELTRAIL_KAFKA_JAVA_OPTS"
# Small heap and serial GC: the machines have 2 cores, and a parallel/G1 collector's threads
# would compete with the tests for them.
KAFKA_JAVA_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
DEFAULT_TIMEOUT_S = float(os.environ.get("MODELTRAIL_SERVICE_TIMEOUT", "120"))
LOG_TAIL_LINES = 40
JAVA_MIN = 17
# Debian/Ubuntu packages with a Java 17+ runtime, preferred first (default-jre-headless is
# 17+ from Debian 12 and Ubuntu 24.04 on); the first one apt knows is installed.
JAVA_PACKAGES = ("openjdk-17-jre-headless", "openjdk-21-jre-headless", "default-jre-headless")
MAVEN_PACKAGES = ("maven",)
POSTGRES_PACKAGES = ("postgresql",)


class ServiceError(RuntimeError):
    """A server could not be started or stopped; the message is meant for humans."""


# --------------------------------------------------------------------------------------------
# small helpers


def _log(message: str) -> None:
    # stdout is reserved for `export` lines so that `eval "$(... start ...)"` works.
    print(f"[services] {message}", file=sys.stderr, flush=True)


def default_dir() -> Path:
    """Stable default so `start` and a later `stop`/`status` agree without --dir."""
    base = os.environ.get("MODELTRAIL_SERVICES_DIR")
    if base:
        return Path(base)
    return Path(tempfile.gettempdir()) / f"modeltrail-services-{os.getuid()}"


def cache_root() -> Path:
    env = os.environ.get("MODELTRAIL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "modeltrail"


def free_port() -> int:
    # Binding port 0 lets the kernel pick; there is a small race until the server binds it,
    # which start() covers by retrying once on "address in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (reaps it if it is our own dead child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state; Z/X mean it has exited.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def _kill(pid: int, timeout: float) -> None:
    """SIGTERM (clean shutdown), then SIGKILL if it is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout):
        _log(f"pid {pid} ignored SIGTERM for {timeout:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, 10)


def _run(
    cmd: Sequence[str],
    *,
    what: str | None = None,
    user: str | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; any failure becomes a ServiceError.

    The error's first line is short and self-contained ("<what> failed (exit N): <last output
    line>"), because the pytest fixtures use it as the skip reason; details follow it.
    """
    what = what or " ".join([Path(cmd[0]).name, *cmd[1:2]])
    try:
        proc = subprocess.run(
            list(cmd),
            user=user,
            group=_gid(user) if user else None,
            extra_groups=[] if user else None,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"{what} could not run: {exc}\ncommand: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        last = output.splitlines()[-1] if output else "(no output)"
        raise ServiceError(
            f"{what} failed (exit {proc.returncode}): {last}\n"
            f"--- output ---\n{output}\n--- command ---\n{' '.join(cmd)}"
        )
    return proc


def _gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent starts (pytest-xdist, two shells) serialise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# state files


def service_dir(kind: str, base: Path) -> Path:
    return base / kind


def read_state(kind: str, base: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((service_dir(kind, base) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _write_state(kind: str, base: Path, state: dict[str, Any]) -> None:
    path = service_dir(kind, base) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def running_state(kind: str, base: Path) -> dict[str, Any] | None:
    """The state file's content if its server process is still alive, else None."""
    state = read_state(kind, base)
    if state is None:
        return None
    pid = int(state.get("pid", 0))
    # Guard against pid reuse: the live process must be ours (its command line names our dir).
    if pid > 0 and pid_alive(pid) and str(service_dir(kind, base)) in _cmdline(pid):
        return state
    return None


def _fresh_service_dir(kind: str, base: Path) -> Path:
    """Empty service dir; a previous run's data is dropped (tests want a clean server)."""
    sdir = service_dir(kind, base)
    if sdir.exists():
        if not (sdir / OWNER_MARKER).exists() and any(sdir.iterdir()):
            raise ServiceError(f"{sdir} exists and was not created by services.py; not wiping it")
        shutil.rmtree(sdir)
    sdir.mkdir(parents=True)
    (sdir / OWNER_MARKER).write_text("created by scripts/services.py; safe to delete\n")
    return sdir


# --------------------------------------------------------------------------------------------
# Kafka


def _apt_install(what: str, candidates: Sequence[str]) -> None:
    """Installs the first of ``candidates`` that apt knows, non-interactively, when root
    with apt-get; otherwise a ServiceError naming the packages to install."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            f"{what} is not installed and this is not root with apt-get to install it: "
            f"install {' or '.join(candidates)} (e.g. sudo apt-get install {candidates[0]})"
        )
    _log(f"{what} not found; installing it with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env, timeout=600)
    known = [name for name in candidates if _apt_knows(name, env)]
    if not known:
        raise ServiceError(f"{what}: apt knows none of the packages {', '.join(candidates)}")
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", known[0]],
        env=env,
        timeout=900,
    )


def _apt_knows(package: str, env: dict[str, str]) -> bool:
    cmd = ["apt-cache", "show", package]
    return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0


def java_version(java: str) -> int:
    """The major version of a java binary ("1.8.0_292" is 8, "17.0.15" is 17)."""
    proc = _run([java, "-version"], what="java -version", timeout=60)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if found is None:
        raise ServiceError(f"cannot tell the version of {java}: {proc.stderr.strip()}")
    major = int(found[1])
    return int(found[2] or 0) if major == 1 else major


_JAVA: list[str] = []  # the checked binary, once found


def java_binary() -> str:
    """``java`` (17+) from PATH, installed with apt-get when absent and we are root."""
    if _JAVA:
        return _JAVA[0]
    java = shutil.which("java")
    if java is None:
        _apt_install(f"Java {JAVA_MIN}+ (needed to run Kafka)", JAVA_PACKAGES)
        java = shutil.which("java")
        if java is None:
            raise ServiceError("java not found on PATH even after installing it")
    version = java_version(java)
    if version < JAVA_MIN:
        raise ServiceError(
            f"{java} is Java {version}; Kafka needs Java {JAVA_MIN}+: install "
            f"{' or '.join(JAVA_PACKAGES)} and put its java first on PATH"
        )
    _JAVA.append(java)
    return java


def kafka_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not node.text:
        raise ServiceError(f"no <kafka.version> property in {KAFKA_POM}")
    return node.text.strip()


def kafka_lib_dir() -> Path:
    """Directory with the broker jars; runs Maven the first time (or after a pom change)."""
    home = cache_root() / f"kafka-{kafka_version()}"
    lib = home / "lib"
    marker = home / "complete"
    # The marker holds the pom's hash, so editing the pom refreshes the cache.
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    with _locked(home / ".lock"):
        if lib.is_dir() and marker.exists() and marker.read_text().strip() == digest:
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            _apt_install("Maven (mvn, needed once to fetch the Kafka jars)", MAVEN_PACKAGES)
            mvn = shutil.which("mvn")
            if mvn is None:
                raise ServiceError("Maven (mvn) not found on PATH even after installing it")
        staging = home / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        _log(f"fetching Kafka {kafka_version()} jars with Maven into {lib} ...")
        started = time.monotonic()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        _run(cmd, what="Maven fetch of the Kafka jars", cwd=KAFKA_POM.parent, timeout=900)
        shutil.rmtree(lib, ignore_errors=True)
        staging.replace(lib)
        marker.write_text(digest + "\n")
        _log(f"Maven fetch took {time.monotonic() - started:.1f}s")
        return lib


def kafka_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of the 16 bytes, without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def kafka_server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # 4.x dynamic quorum: bootstrap servers instead of controller.quorum.voters, which
        # pairs with `StorageTool format --standalone`.
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # One node: every internal topic must have replication factor 1 or it never appears.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests join groups constantly; the default 3s delay would be paid by each first join.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created explicitly (with configs) by the code under test.
        "auto.create.topics.enable": "false",
        "num.partitions": "4",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def kafka_log4j_config(log_file: Path) -> str:
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        # The request logger is extremely chatty at INFO/DEBUG.
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
    )


def _java_cmd(lib: Path, sdir: Path, *, short_lived: bool = False) -> list[str]:
    java = java_binary()
    extra = os.environ.get(KAFKA_JAVA_OPTS_ENV, "").split()
    # C1 only: about 0.2s faster for the one-shot format tool. Not for the broker, whose
    # throughput the benchmarks measure.
    quick = ["-XX:TieredStopAtLevel=1"] if short_lived else []
    return [
        java,
        *KAFKA_JAVA_OPTS,
        *quick,
        *extra,
        f"-Dlog4j2.configurationFile={sdir / 'log4j2.properties'}",
        "-cp",
        f"{lib}/*",
    ]


def _kafka_request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1) and return the response body after the correlation id."""
    client_id = b"modeltrail-services"
    header = struct.pack(">hhih", api_key, version, 1, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    return _recv_exact(sock, size)[4:]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks += chunk
    return bytes(chunks)


def kafka_broker_count(bootstrap: str, timeout: float = 2.0) -> int:
    """Number of live brokers in a Metadata v4 response (0 while the node is still fencing).

    A real Metadata request, not just a TCP connect: the listener accepts connections before
    the broker has registered with the controller, and clients fail until it has.
    """
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # Metadata v4 body: topics = [] (none, just brokers), allow_auto_topic_creation = false.
        body = _kafka_request(sock, 3, 4, struct.pack(">ib", 0, 0))
    # Response v4: throttle_time_ms int32, then the brokers array length.
    _throttle, brokers = struct.unpack(">ii", body[:8])
    return int(brokers)


def _wait_kafka(bootstrap: str, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ServiceError("Kafka exited during startup")
        with contextlib.suppress(OSError, struct.error):
            if kafka_broker_count(bootstrap) > 0:
                return
        time.sleep(0.2)
    raise ServiceError(f"Kafka did not answer a Metadata request on {bootstrap} in {timeout:.0f}s")


def _start_kafka(base: Path, timeout: float) -> dict[str, Any]:
    java_binary()  # first: Maven's own package would bring the distribution's default Java
    lib = kafka_lib_dir()
    sdir = _fresh_service_dir("kafka", base)
    data_dir = sdir / "data"
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    (sdir / "server.properties").write_text(
        kafka_server_properties(data_dir, port, controller_port)
    )
    (sdir / "log4j2.properties").write_text(kafka_log4j_config(sdir / "server.log"))
    java = _java_cmd(lib, sdir)
    started = time.monotonic()
    _run(
        [
            *_java_cmd(lib, sdir, short_lived=True),
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(sdir / "server.properties"),
            # One argument, "--cluster-id=…": an id may start with "-" (1 in 64), which the
            # tool's parser would take for an option if it came as a separate argument.
            f"--cluster-id={kafka_cluster_id()}",
            "--standalone",
        ],
        what="Kafka storage format",
        cwd=sdir,
        timeout=timeout,
    )
    formatted = time.monotonic()
    pid = _spawn([*java, "kafka.Kafka", str(sdir / "server.properties")], sdir, sdir / "stdout.log")
    bootstrap = f"{HOST}:{port}"
    try:
        _wait_kafka(bootstrap, pid, timeout)
    except ServiceError as exc:
        _kill(pid, 10)
        raise ServiceError(f"{exc}\n{_failure_logs(sdir, 'server.log', 'stdout.log')}") from exc
    ready = time.monotonic()
    _log(
        f"Kafka {kafka_version()} ready on {bootstrap} in {ready - started:.1f}s "
        f"(format {formatted - started:.1f}s, broker {ready - formatted:.1f}s), pid {pid}"
    )
    return {
        "kind": "kafka",
        "pid": pid,
        "port": port,
        "controller_port": controller_port,
        "dir": str(sdir),
        "url": bootstrap,
        "bootstrap": bootstrap,
        "version": kafka_version(),
        "log": str(sdir / "server.log"),
        "startup_seconds": round(ready - started, 2),
    }


def _spawn(cmd: Sequence[str], cwd: Path, log: Path) -> int:
    """Start a daemon and return its pid.

    A throwaway `sh` backgrounds the command and exits, so the daemon is not our child: it
    survives us, leaves no zombie behind and no "subprocess still running" ResourceWarning.
    The new session keeps our terminal's SIGINT/SIGHUP away from it.
    """
    script = '"$@" </dev/null >>"$MODELTRAIL_LOG" 2>&1 & echo $!'
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", script, "sh", *cmd],
            cwd=cwd,
            env={**os.environ, "MODELTRAIL_LOG": str(log)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            check=True,
            timeout=30,
        )
        return int(proc.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"could not launch {Path(cmd[0]).name}: {exc}") from exc


def _failure_logs(sdir: Path, *names: str) -> str:
    parts = []
    for name in names:
        path = sdir / name
        if path.exists() and path.stat().st_size > 0:
            parts.append(f"--- last {LOG_TAIL_LINES} lines of {path} ---\n{_tail(path)}")
    return "\n".join(parts) or f"(no logs in {sdir})"


def _stop_kafka(state: dict[str, Any], timeout: float) -> None:
    # SIGTERM runs the JVM shutdown hooks: a clean broker shutdown (~0.4s for one node).
    _kill(int(state["pid"]), timeout)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl/psql; installs Debian's postgresql package if absent."""
    found = _find_pg_bin()
    if found is None:
        _install_postgresql()
        found = _find_pg_bin()
    if found is None:
        raise ServiceError("PostgreSQL binaries (initdb) not found even after installing them")
    return found


def _find_pg_bin() -> Path | None:
    # Debian keeps initdb off PATH (in /usr/lib/postgresql/<major>/bin); prefer the newest.
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _install_postgresql() -> None:
    _apt_install("PostgreSQL (initdb)", POSTGRES_PACKAGES)


def pg_os_user() -> str | None:
    """OS user to run the server as: None (ourselves) unless root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "modeltrail"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    _run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "modeltrail",
        ]
    )
    return "modeltrail"


def _make_reachable(base: Path, sdir: Path, user: str) -> None:
    """Let `user` reach `sdir`: chown it, open `base` for traversal, check the ancestors."""
    entry = pwd.getpwnam(user)
    os.chown(sdir, entry.pw_uid, entry.pw_gid)
    # tempfile.mkdtemp() dirs are 0700; the server user only needs to traverse our base dir.
    base.chmod(base.stat().st_mode | 0o111)
    for parent in base.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise ServiceError(
                f"{parent} is not traversable by user {user!r}; pick a --dir under /tmp instead"
            )


def pg_settings(port: int, socket_dir: Path | None, durable: bool) -> str:
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(port),
        # An empty value disables Unix sockets (used when the path would be too long).
        "unix_socket_directories": f"'{socket_dir}'" if socket_dir else "''",
        "max_connections": "200",
        "log_min_messages": "warning",
    }
    if not durable:
        # Test default: no fsync. Benchmarks pass durable=True to keep realistic commit costs.
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return f"\n# --- added by scripts/services.py ---\n{lines}"


def _pg_socket_dir(sdir: Path, port: int) -> Path | None:
    # sun_path is 108 bytes; ".s.PGSQL.<port>.lock" must fit behind the directory name.
    return sdir if len(f"{sdir}/.s.PGSQL.{port}.lock") < 100 else None


def _start_postgres(base: Path, timeout: float, durable: bool) -> dict[str, Any]:
    bindir = pg_bin_dir()
    user = pg_os_user()
    sdir = _fresh_service_dir("postgres", base)
    if user:
        _make_reachable(base, sdir, user)
    data = sdir / "data"
    port = free_port()
    started = time.monotonic()
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
            *([] if durable else ["--no-sync"]),
        ],
        user=user,
        cwd=sdir,
        timeout=timeout,
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(pg_settings(port, _pg_socket_dir(sdir, port), durable))
    initialised = time.monotonic()
    try:
        _run(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(data),
                "-l",
                str(sdir / "server.log"),
                "-w",
                "-t",
                str(int(timeout)),
            ],
            user=user,
            cwd=sdir,
            timeout=timeout + 10,
        )
    except ServiceError as exc:
        raise ServiceError(f"{exc}\n{_failure_logs(sdir, 'server.log')}") from exc
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        _run([str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port)], timeout=30)
        _psql(bindir, port, "postgres", f"CREATE DATABASE {PG_DATABASE}")
        _psql(bindir, port, PG_DATABASE, "SELECT 1")
    except ServiceError as exc:
        _kill(pid, 10)
        raise ServiceError(f"{exc}\n{_failure_logs(sdir, 'server.log')}") from exc
    ready = time.monotonic()
    url = f"postgresql+psycopg://{PG_SUPERUSER}@{HOST}:{port}/{PG_DATABASE}"
    _log(
        f"PostgreSQL ready on {HOST}:{port} in {ready - started:.1f}s "
        f"(initdb {initialised - started:.1f}s, start {ready - initialised:.1f}s), pid {pid}"
        + ("" if durable else ", fsync=off")
    )
    return {
        "kind": "postgres",
        "pid": pid,
        "port": port,
        "dir": str(sdir),
        "url": url,
        "libpq_url": f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/{PG_DATABASE}",
        "user": PG_SUPERUSER,
        "os_user": user,
        "durable": durable,
        "log": str(sdir / "server.log"),
        "startup_seconds": round(ready - started, 2),
    }


def _psql(bindir: Path, port: int, database: str, sql: str) -> None:
    cmd = [
        str(bindir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        HOST,
        "-p",
        str(port),
        "-U",
        PG_SUPERUSER,
        "-d",
        database,
        "-c",
        sql,
    ]
    _run(cmd, timeout=60)


def _stop_postgres(state: dict[str, Any], timeout: float) -> None:
    data = Path(state["dir"]) / "data"
    with contextlib.suppress(ServiceError, OSError, subprocess.TimeoutExpired):
        # Fast mode: roll back open transactions instead of waiting for test clients.
        _run(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "stop",
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
            ],
            user=state.get("os_user"),
            cwd=Path(state["dir"]),
            timeout=timeout + 10,
        )
    # Covers a failed pg_ctl (and reaps the postmaster if it was our child).
    if pid_alive(int(state["pid"])):
        _kill(int(state["pid"]), timeout)


# --------------------------------------------------------------------------------------------
# public API


def start(
    kind: str,
    dir: str | os.PathLike[str] | None = None,
    *,
    durable: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    owner_pid: int | None = None,
) -> dict[str, Any]:
    """Start `kind` under `dir` (default: default_dir()) unless it already runs there.

    Returns the state dict: kind, pid, port, dir, url (SQLAlchemy URL for postgres, bootstrap
    "host:port" for kafka), env ({VAR: value} to export) and timings. Raises ServiceError.
    With `owner_pid`, a watchdog stops the server (and deletes its data) once that process is
    gone, so a test run killed with SIGKILL leaves nothing running.
    """
    _check_kind(kind)
    base = Path(dir) if dir is not None else default_dir()
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{kind}.lock"):
        existing = running_state(kind, base)
        if existing is not None:
            _log(f"{kind} already running (pid {existing['pid']}) in {existing['dir']}")
            if kind == "postgres" and bool(existing.get("durable")) != durable:
                _log(f"warning: it runs with durable={existing.get('durable')}; stop it first")
            return existing
        state = _start_with_retry(kind, base, timeout, durable)
        state["env"] = {ENV_VARS[kind]: state["url"]}
        state["started_at"] = time.time()
        _write_state(kind, base, state)
        if owner_pid is not None:
            _spawn_watchdog(kind, base, owner_pid)
        return state


def _spawn_watchdog(kind: str, base: Path, owner_pid: int) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "watch", kind]
    cmd += ["--dir", str(base), "--owner-pid", str(owner_pid)]
    _spawn(cmd, base, service_dir(kind, base) / "watchdog.log")


def watch(kind: str, base: Path, owner_pid: int, interval: float = 1.0) -> None:
    """Wait until `owner_pid` exits, then stop `kind`; return early if it stops by itself."""
    first = running_state(kind, base)
    while first is not None:
        current = running_state(kind, base)
        if current is None or current["pid"] != first["pid"]:
            return  # stopped (or replaced) by its owner: nothing left to guard
        if not pid_alive(owner_pid):
            _log(f"owner pid {owner_pid} is gone; stopping {kind}")
            stop(kind, base, remove=True)
            return
        time.sleep(interval)


def _start_with_retry(kind: str, base: Path, timeout: float, durable: bool) -> dict[str, Any]:
    # One retry, for the free_port() race (another process grabbed the port before us).
    for attempt in (1, 2):
        try:
            if kind == "kafka":
                return _start_kafka(base, timeout)
            return _start_postgres(base, timeout, durable)
        except ServiceError as exc:
            if attempt == 2 or "in use" not in str(exc).lower():
                raise
            _log(f"{kind}: port taken during startup, retrying once")
    raise AssertionError("unreachable")


def stop(
    kind: str,
    dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 30.0,
    remove: bool = False,
) -> bool:
    """Stop `kind` (or "all") in `dir`. Returns True if something was running.

    `remove=True` also deletes the service's data directory (the fixtures use it).
    """
    kinds = KINDS if kind == "all" else (kind,)
    base = Path(dir) if dir is not None else default_dir()
    stopped = False
    for one in kinds:
        _check_kind(one)
        stopped |= _stop_one(one, base, timeout)
        sdir = service_dir(one, base)
        if remove and (sdir / OWNER_MARKER).exists():
            shutil.rmtree(sdir, ignore_errors=True)
    return stopped


def _stop_one(kind: str, base: Path, timeout: float) -> bool:
    state = running_state(kind, base)
    if state is None:
        return False
    started = time.monotonic()
    if kind == "kafka":
        _stop_kafka(state, timeout)
    else:
        _stop_postgres(state, timeout)
    _log(f"{kind} (pid {state['pid']}) stopped in {time.monotonic() - started:.1f}s")
    with contextlib.suppress(OSError):
        (service_dir(kind, base) / STATE_FILE).unlink()
    return True


def status(kind: str = "all", dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """{kind: state dict or None} for each requested kind."""
    base = Path(dir) if dir is not None else default_dir()
    kinds = KINDS if kind == "all" else (kind,)
    return {one: running_state(one, base) for one in kinds}


def export_lines(state: dict[str, Any]) -> list[str]:
    return [f"export {name}={shlex.quote(str(value))}" for name, value in state["env"].items()]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ServiceError(f"unknown service {kind!r}; expected one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    start_p = sub.add_parser("start", help="start a server and print `export` lines")
    start_p.add_argument("kind", choices=KINDS)
    start_p.add_argument(
        "--durable",
        action="store_true",
        help="postgres: keep fsync/synchronous_commit on (for benchmarks)",
    )
    start_p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    start_p.add_argument(
        "--owner-pid", type=int, default=None, help="stop the server when this process exits"
    )
    watch_p = sub.add_parser("watch", help="(internal) stop a server once --owner-pid exits")
    watch_p.add_argument("kind", choices=KINDS)
    watch_p.add_argument("--owner-pid", type=int, required=True)
    stop_p = sub.add_parser("stop", help="stop a server")
    stop_p.add_argument("kind", choices=(*KINDS, "all"))
    stop_p.add_argument("--remove", action="store_true", help="also delete its data directory")
    status_p = sub.add_parser("status", help="show what runs (exit 3 if something is down)")
    status_p.add_argument("kind", nargs="?", choices=(*KINDS, "all"), default="all")
    for sub_parser in (start_p, stop_p, status_p, watch_p):
        sub_parser.add_argument(
            "--dir", type=Path, default=None, help=f"data/state directory (default {default_dir()})"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            state = start(
                args.kind,
                args.dir,
                durable=args.durable,
                timeout=args.timeout,
                owner_pid=args.owner_pid,
            )
            print("\n".join(export_lines(state)), flush=True)
            return 0
        if args.command == "watch":
            watch(args.kind, args.dir or default_dir(), args.owner_pid)
            return 0
        if args.command == "stop":
            if not stop(args.kind, args.dir, remove=args.remove):
                _log(f"{args.kind}: nothing running")
            return 0
        states = status(args.kind, args.dir)
        for name, state in states.items():
            print(
                f"{name}: running pid {state['pid']} {state['url']}"
                if state
                else f"{name}: stopped"
            )
        return 0 if all(states.values()) else 3
    except (ServiceError, OSError) as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
