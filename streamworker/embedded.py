"""A private redis-server for ``streamworker dev`` and the tests: a free loopback port, a
temporary directory, and nothing left behind when it stops."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EmbeddedCluster", "EmbeddedRedis", "RedisServerError", "free_port"]


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Managed:
    """``with server:`` starts it and closes it (stopped, its directory removed) on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmbeddedRedis(_Managed):
    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
        directory: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._extra = extra_args
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="streamworker-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError(
                "redis-server not found on PATH: install the Debian package redis-server"
            )
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
            *self._extra,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-500:]
                raise RedisServerError(f"redis-server exited at start on port {self.port}: {log}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Stop hard (SIGKILL), keeping the data directory: for restart tests."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too; both below 65536."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RedisServerError("no free port pair for a cluster node")


class EmbeddedCluster(_Managed):
    """A private Redis Cluster of ``masters`` redis-servers on loopback (no replicas), made
    with ``redis-cli --cluster create`` (each master takes an equal share of the slots).

    For tests, benchmarks and trying ``REDIS_CLUSTER=true`` out; ``url`` names one node,
    the cluster client finds the others.
    """

    def __init__(self, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        self.nodes = [
            EmbeddedRedis(
                port=_free_cluster_port(),
                extra_args=(*cluster_args, "--cluster-node-timeout", "2000"),
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError(
                "redis-cli not found on PATH: install the Debian package redis-server"
            )
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=timeout, check=False,
            )  # fmt: skip
            if create.returncode != 0:
                raise RedisServerError(
                    "redis-cli --cluster create failed: "
                    + create.stdout.decode(errors="replace")[-500:]
                )
            deadline = time.monotonic() + timeout
            while not all(self._state_ok(n) for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RedisServerError(f"cluster_state not ok within {timeout}s")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _state_ok(node: EmbeddedRedis) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", node.port), timeout=0.5) as sock:
                sock.sendall(b"CLUSTER INFO\r\n")
                return b"cluster_state:ok" in sock.recv(4096)
        except OSError:
            return False

    def close(self) -> None:
        for node in self.nodes:
            node.close()
