#!/usr/bin/env python3
"""Put a wheel of every runtime dependency into docker/wheels/ for an offline image build.

The Dockerfile installs from that folder alone (``pip install --no-index --find-links``) when it
holds wheels; see docker/wheels/README.md. This script uses this machine's ordinary pip client
with its own index settings (``pip download``), for the image's Python and platform:

    python3 docker/prepare_wheels.py [--python-version 3.11] [--arch x86_64]

pip evaluates environment markers against the interpreter that runs it, not the target, so a
dependency needed only on some 3.11.x (``async-timeout; python_full_version < "3.11.3"``, for
Debian's 3.11.2) would be missing. After the download, the wheels' own requirements are walked
under the target's markers (every patch release of the target version) and what is missing is
downloaded too. Nothing is done when the folder already matches pyproject.toml.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip's own copy
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef,assignment]

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / "docker" / "wheels"
STAMP = WHEELS / ".stamp"
#: The oldest glibc the image is built on (Debian 12); manylinux wheels up to it qualify.
GLIBC_MINOR = 36


def runtime_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def pip_download(requirements: list[str], python_version: str, arch: str) -> None:
    platforms = [f"manylinux1_{arch}", f"manylinux2010_{arch}", f"manylinux2014_{arch}"]
    platforms += [f"manylinux_2_{minor}_{arch}" for minor in range(5, GLIBC_MINOR + 1)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "--abi", "cp" + python_version.replace(".", ""), "--dest", str(WHEELS),
    ]  # fmt: skip
    for tag in platforms:
        command += ["--platform", tag]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True, check=False)
    # This machine's pip configuration may name local indexes that lack a project: noise.
    noise = re.compile(r"^WARNING: Location .* is ignored")
    errors = [line for line in result.stderr.splitlines() if not noise.match(line)]
    if result.returncode != 0:
        print("\n".join(errors[-20:]), file=sys.stderr)
        raise SystemExit("pip download failed: a dependency may have no wheel for this platform")


def wheel_metadata() -> dict[str, list[str]]:
    """Requires-Dist of each wheel in the folder, by canonical project name."""
    found: dict[str, list[str]] = {}
    for wheel in sorted(WHEELS.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = Parser().parsestr(archive.read(name).decode())
        found[canonicalize_name(metadata["Name"])] = metadata.get_all("Requires-Dist") or []
    return found


def missing_for_target(python_version: str, arch: str) -> list[str]:
    """Requirements the target environment needs that no wheel in the folder provides."""
    metadata = wheel_metadata()
    environments = [
        {
            "python_version": python_version,
            "python_full_version": f"{python_version}.{patch}",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_system": "Linux",
            "platform_machine": arch,
        }
        for patch in range(30)
    ]

    def applies(marker: Marker | None, extras: set[str]) -> bool:
        if marker is None:
            return True
        return any(
            marker.evaluate({**environment, "extra": extra})
            for environment in environments
            for extra in extras | {""}
        )

    wanted: dict[str, set[str]] = {}
    queue = [Requirement(text) for text in runtime_requirements()]
    missing: list[str] = []
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in wanted and extras <= wanted[name]:
            continue
        wanted.setdefault(name, set()).update(extras)
        if name not in metadata:
            missing.append(str(requirement).split(";")[0].strip())
            continue
        for text in metadata[name]:
            dependency = Requirement(text)
            if applies(dependency.marker, wanted[name]):
                dependency.marker = None
                queue.append(dependency)
    return sorted(set(missing))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.11", help="X.Y of the image's Python")
    parser.add_argument("--arch", default=platform.machine(), help="x86_64 or aarch64")
    args = parser.parse_args()

    requirements = runtime_requirements()
    stamp = hashlib.sha256(
        "\n".join([args.python_version, args.arch, *requirements]).encode()
    ).hexdigest()[:16]
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = list(WHEELS.glob("*.whl"))
    if wheels and STAMP.is_file() and STAMP.read_text().strip() == stamp:
        print(f"    wheels: docker/wheels is up to date ({len(wheels)} wheels)", file=sys.stderr)
        return 0

    for wheel in wheels:
        wheel.unlink()
    STAMP.unlink(missing_ok=True)
    print(
        f"    wheels: downloading the runtime dependencies for CPython {args.python_version}"
        f" on {args.arch}",
        file=sys.stderr,
    )
    pip_download(requirements, args.python_version, args.arch)
    for _ in range(5):
        missing = missing_for_target(args.python_version, args.arch)
        if not missing:
            break
        print(f"    wheels: also for other {args.python_version}.x: {missing}", file=sys.stderr)
        pip_download(missing, args.python_version, args.arch)
    else:
        raise SystemExit(f"still missing after 5 rounds: {missing}")
    STAMP.write_text(stamp + "\n")
    wheels = list(WHEELS.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    print(f"    wheels: {len(wheels)} wheels, {size:.0f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
