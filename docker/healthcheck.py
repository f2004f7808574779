"""Docker HEALTHCHECK for the streamworker image, aware of the container's role.

The image has one ENTRYPOINT (``streamworker``) and the role is its first argument, so the
check finds the running ``streamworker`` command line in /proc and probes what that role
serves:

- ``api``: ``GET http://127.0.0.1:<port>/healthz``, the port from ``--port`` or ``PORT``.
- ``worker``, ``scheduler``, ``dev``: ``GET /healthz`` on ``METRICS_PORT`` when it is set.
  Without ``METRICS_PORT`` there is no endpoint to ask; the check reports healthy, which
  then only means the process is alive (Docker stops the container when it exits).
- one-shot commands (``publish``, ``stats``, …): nothing to check.

Exit 0 healthy, 1 unhealthy, with one line on stdout that ``docker inspect`` shows.
Kubernetes ignores HEALTHCHECK; the Helm chart uses httpGet probes on the same endpoints.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from streamworker.settings import ConfigError, Settings

HTTP_ROLES = {"api"}
METRICS_ROLES = {"worker", "scheduler", "dev"}
TIMEOUT_SECONDS = 3.0


def streamworker_argv(cmdlines: Iterable[Sequence[str]]) -> list[str] | None:
    """The arguments after ``streamworker`` in the first command line that runs it."""
    for argv in cmdlines:
        for i, arg in enumerate(argv):
            if Path(arg).name == "streamworker":
                return list(argv[i + 1 :])
    return None


def health_url(args: Sequence[str], settings: Settings) -> str | None:
    """The URL to probe for a ``streamworker`` invocation, or None when there is none."""
    role = next((a for a in args if not a.startswith("-")), None)
    if role in HTTP_ROLES:
        port = settings.port
        for i, arg in enumerate(args):
            if arg == "--port" and i + 1 < len(args):
                port = int(args[i + 1])
            elif arg.startswith("--port="):
                port = int(arg.partition("=")[2])
        return f"http://127.0.0.1:{port}/healthz"
    if role in METRICS_ROLES and settings.metrics_port is not None:
        return f"http://127.0.0.1:{settings.metrics_port}/healthz"
    return None


def probe(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return 200 <= response.status < 300, f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} unreachable: {reason}"


def _proc_cmdlines() -> Iterable[list[str]]:
    # PID 1 first: it is streamworker itself unless the container runs an init (--init).
    pids = sorted(
        (p for p in Path("/proc").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    for pid in pids:
        try:
            raw = (pid / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield raw.rstrip(b"\0").decode(errors="replace").split("\0")


def check(cmdlines: Iterable[Sequence[str]], environ: Mapping[str, str] | None = None) -> int:
    """Probe the running role; print one line; return the exit status."""
    args = streamworker_argv(cmdlines)
    if args is None:
        print("unhealthy: no streamworker process found")
        return 1
    try:
        settings = Settings.from_env(environ)
        url = health_url(args, settings)
    except ConfigError as exc:
        print(f"unhealthy: {exc}")
        return 1
    except ValueError:
        print("unhealthy: --port is not a number")
        return 1
    if url is None:
        print(f"healthy: no health endpoint for {' '.join(args[:1]) or 'streamworker'}")
        return 0
    ok, detail = probe(url)
    print(("healthy: " if ok else "unhealthy: ") + detail)
    return 0 if ok else 1


def main() -> int:
    return check(_proc_cmdlines())


if __name__ == "__main__":
    sys.exit(main())
