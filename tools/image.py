"""Build the service's container image: ``make image`` (and ``make image-test``, which builds through it).

    python3 tools/image.py build --tool docker|buildah --image cifar10-serving [--base IMAGE]
    python3 tools/image.py base                      # the Debian stand-in base; prints its name

``build`` runs ``docker build`` or ``buildah build --isolation chroot`` (Debian's buildah: no daemon; root)
on the repository's Dockerfile, passing ``--build-arg BASE_IMAGE=...`` when a base is given (else the
Dockerfile's own ``python:3.12-slim``). With buildah, a CA bundle named by ``--ca`` (``make image`` passes
``$PIP_CERT``, else ``$SSL_CERT_FILE``) is mounted into the build for that one step, with a pip.conf naming
it, so pip reaches the package index through a TLS-inspecting proxy; nothing of it stays in the image.

``base`` makes the stand-in for ``python:3.12-slim`` where no container registry can be reached: Debian
bookworm (``mmdebstrap --variant=minbase``) with its Python 3.11 in a virtual environment at
/opt/python, whose ``bin`` comes first on PATH, so ``python`` and ``python -m pip`` behave as in the
registry's image. It is kept twice, so a rerun costs nothing: as the buildah image
``localhost/cifar10-standin-base:<recipe hash>`` and as the root-filesystem tarball under
``$XDG_CACHE_HOME/cifar10-classifier`` (``~/.cache`` by default; a CI cache can keep that folder). The
hash covers the whole recipe, so a changed recipe is a new image, never a stale one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY_BASE = "python:3.12-slim"  # the Dockerfile's default
STANDIN_NAME = "localhost/cifar10-standin-base"
STANDIN_SUITE = "bookworm"
STANDIN_PYTHON = "/opt/python"
STANDIN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# As Debian's slim images: no manuals, translations or documentation besides the licences.
STANDIN_DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*",
                        "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
                        "force-unsafe-io")
STANDIN_HOOK = f'chroot "$1" python3 -m venv {STANDIN_PYTHON}'
STANDIN_ENV = {"PATH": f"{STANDIN_PYTHON}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}
BUILD_CA_PATH = "/etc/pip-build-ca.pem"  # where the CA bundle is mounted during the build (buildah only)


def log(message: str) -> None:
    print(message, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("+ " + shlex.join(cmd))
    return subprocess.run(cmd, check=True, **kwargs)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar10-classifier"


STANDIN_LABELS = {"cifar10-classifier.base": f"stand-in for {REGISTRY_BASE}: Debian {STANDIN_SUITE} minbase, "
                                             f"its python3 in a venv at {STANDIN_PYTHON} (tools/image.py)"}


def _digest(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_recipe() -> dict:
    """Everything the stand-in's root filesystem (the cached tarball) is made from."""
    return {"suite": STANDIN_SUITE, "variant": "minbase", "packages": list(STANDIN_PACKAGES),
            "dpkg_options": list(STANDIN_DPKG_OPTIONS), "hook": STANDIN_HOOK}


def standin_tag() -> str:
    """The stand-in image's name: its root filesystem and its configuration, hashed."""
    config = {"rootfs": rootfs_recipe(), "env": STANDIN_ENV, "labels": STANDIN_LABELS}
    return f"{STANDIN_NAME}:{STANDIN_SUITE}-{_digest(config)}"


def standin_tarball() -> Path:
    return cache_dir() / f"standin-rootfs-{STANDIN_SUITE}-{_digest(rootfs_recipe())}.tar"


def buildah_has_image(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def make_standin_tarball(target: Path) -> None:
    """The root filesystem as a tarball, written to a temporary name first so a killed run leaves no half file."""
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap is not installed (Debian: apt-get install mmdebstrap); it makes the stand-in "
                         f"base where {REGISTRY_BASE} cannot be pulled")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.tar")
    cmd = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(STANDIN_PACKAGES),
           *[f"--dpkgopt={option}" for option in STANDIN_DPKG_OPTIONS], f"--customize-hook={STANDIN_HOOK}",
           STANDIN_SUITE, str(partial)]
    run(cmd)
    partial.rename(target)


def ensure_standin() -> str:
    """The stand-in base's buildah image name, made (or imported from the cached tarball) when missing."""
    tag = standin_tag()
    if buildah_has_image(tag):
        log(f"stand-in base {tag}: already built")
        return tag
    tarball = standin_tarball()
    if tarball.exists():
        log(f"stand-in base: importing the cached root filesystem {tarball}")
    else:
        log(f"stand-in base: making the root filesystem with mmdebstrap -> {tarball}")
        make_standin_tarball(tarball)
    container = subprocess.run(["buildah", "from", "scratch"], check=True, capture_output=True,
                               text=True).stdout.strip()
    try:
        run(["buildah", "add", "--quiet", container, str(tarball), "/"], stdout=subprocess.DEVNULL)
        config = ["buildah", "config", "--cmd", "python"]
        for key, value in STANDIN_ENV.items():
            config += ["--env", f"{key}={value}"]
        for key, value in STANDIN_LABELS.items():
            config += ["--label", f"{key}={value}"]
        run([*config, container])
        run(["buildah", "commit", "--quiet", "--rm", container, tag], stdout=subprocess.DEVNULL)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise
    return tag


def build_command(tool: str, image: str, base: str | None, ca: str | None, workdir: Path) -> list[str]:
    """The build command line; ``workdir`` receives the pip.conf that names the mounted CA bundle."""
    args = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    if tool == "docker":
        return ["docker", "build", *args, "-t", image, "-f", "Dockerfile", "."]
    if tool != "buildah":
        raise SystemExit(f"unknown image tool {tool!r}: docker or buildah")
    mounts = []
    if ca:
        ca_path = Path(ca)
        if not ca_path.is_file():
            raise SystemExit(f"the CA bundle {ca} (--ca, from PIP_CERT or SSL_CERT_FILE) is not a file")
        pip_conf = workdir / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {BUILD_CA_PATH}\n")
        mounts = ["-v", f"{ca_path.resolve()}:{BUILD_CA_PATH}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    # Docker's image format: the OCI format has no HEALTHCHECK, and buildah would drop it.
    return ["buildah", "build", "--isolation", "chroot", "--format", "docker", "--layers", *args, *mounts,
            "-t", image, "-f", "Dockerfile", "."]


def build(tool: str, image: str, base: str | None, ca: str | None) -> float:
    """Build ``image``; returns the seconds it took."""
    with tempfile.TemporaryDirectory(prefix="cifar10-image-build-") as tmp:
        cmd = build_command(tool, image, base, ca, Path(tmp))
        began = time.monotonic()
        run(cmd, cwd=ROOT)
        seconds = time.monotonic() - began
    log(f"built {image} with {tool} in {seconds:.1f} s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image")
    b.add_argument("--tool", choices=("docker", "buildah"), required=True)
    b.add_argument("--image", default="cifar10-serving")
    b.add_argument("--base", default=None, help=f"base image (default: the Dockerfile's {REGISTRY_BASE})")
    b.add_argument("--ca", default=None, help="CA bundle for pip inside a buildah build")
    sub.add_parser("base", help="make (or reuse) the Debian stand-in base with buildah; print its name")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.tool, args.image, args.base or None, args.ca or None)
        else:
            print(ensure_standin())
    except subprocess.CalledProcessError as exc:
        print(f"error: {shlex.join(map(str, exc.cmd))} exited with {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
