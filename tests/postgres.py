"""A real PostgreSQL server for tests: Debian's package, started in a temporary directory.

    def test_x(postgres_url):      # a fresh, empty database on the session's server
        store = open_store(postgres_url, now)

One server per test session (``initdb`` + ``pg_ctl start``: about two seconds),
listening on 127.0.0.1 on a free port and on a Unix socket in its own directory,
``trust`` authentication, fsync off (tests do not survive power cuts). PostgreSQL
refuses to run as root, so as root the server runs as ``nobody`` in a directory that
user owns. Every test gets its own database. Where the package is not installed the
tests skip and say so (scripts/test.sh installs it: apt package ``postgresql``).
"""

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from tests.mosquitto import free_port


def _bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresServer:
    directory: Path
    port: int
    user: str
    run_as: Optional[pwd.struct_passwd]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> str:
        try:
            return (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""


def _demote(account: Optional[pwd.struct_passwd]) -> Optional[Callable[[], None]]:
    if account is None:
        return None

    def switch() -> None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return switch


def _run(args: List[str], account: Optional[pwd.struct_passwd], timeout: float = 60) -> None:
    proc = subprocess.run(
        args,
        preexec_fn=_demote(account),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stdout}{proc.stderr}")


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; scripts/test.sh)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (the fleet extra: pip install -e '.[fleet]')")
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="ea-postgres-"))
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    data = directory / "data"
    _run(
        [initdb, "-D", str(data), "-U", "fleet", "--auth=trust", "-E", "UTF8", "--no-sync"], account
    )
    last = ""
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            _run(
                [
                    pg_ctl,
                    "-D",
                    str(data),
                    "-l",
                    str(directory / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ],
                account,
            )
            return PostgresServer(directory, port, "fleet", account)
        except RuntimeError as exc:
            last = str(exc)
            time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL did not start: {last}")


def stop_postgres(server: PostgresServer) -> None:
    pg_ctl = _bin("pg_ctl")
    if pg_ctl is not None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _run(
                [pg_ctl, "-D", str(server.directory / "data"), "-m", "immediate", "-w", "stop"],
                server.run_as,
            )
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    stop_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request) -> str:
    """A new, empty database for this test; its URL."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.url(name)
