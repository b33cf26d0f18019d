"""This project's own wheel, shipped with the stack as a CDK asset, with the exact versions of its dependencies.

    synth:  source tree (pyproject.toml, README.md, src/) --pip wheel--> ddlc-<v>-py3-none-any.whl
            installed distributions of this environment    --closure--> requirements.txt (name==version)
            both in one directory --CDK asset (zip)--> s3://<cdk assets bucket>/<hash>.zip
            its s3:// URL --> SSM parameter /ddlc/<env>/node-package (read by the nodes at boot)
    boot:   aws ssm get-parameter / aws s3 cp --> pip install --no-deps -r requirements.txt (every line pinned)
            --> pip install --no-index -c requirements.txt "<wheel>[s3,cloudwatch]" (by path; nothing from an index)
            --> stacks with `horovod: true` only: build_horovod.sh (Horovod 0.28.1 from its pinned sdist; NCCL on GPUs)

Nothing is installed by bare name: the pins come from the environment that runs `cdk synth` (synthesize with
the same Python minor version as the AMI's). The AMI's own torch and numpy are never replaced (they are left
out of the pins and must already satisfy ddlc's requirements, or the boot fails). The URL lives in a
parameter, not in the user data, so a new ddlc version does not replace running nodes (see docs).

The wheel is built once per content of the source tree (cached under the temp directory) and reproducibly
(SOURCE_DATE_EPOCH), so repeated synths produce the same asset hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterable

from ddlc.errors import UserError

# Extras every node needs: s3:// checkpoints (and doctor's default probe), CloudWatch publishing, discovery.
NODE_EXTRAS = ("s3", "cloudwatch")
# Shipped by the Deep Learning AMI and built against its CUDA: never replaced by the pins.
PROVIDED_BY_AMI = ("torch", "numpy")
REQUIREMENTS_FILE = "requirements.txt"
MANIFEST_FILE = "manifest.json"
HOROVOD_SCRIPT = "build_horovod.sh"  # scripts/build_horovod.sh, run at boot by stacks with `horovod: true`
_REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold


def source_root() -> Path:
    """The checkout ddlc is imported from (the wheel is built from source, not from an installed copy)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "ddlc").is_dir():
        raise UserError(f"node package: no ddlc source tree at {root} (synthesize from a checkout of ddlc)")
    return root


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _source_files(root: Path) -> Iterable[Path]:
    yield root / "pyproject.toml"
    if (root / "README.md").is_file():
        yield root / "README.md"
    for path in sorted((root / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith((".pyc", ".egg-info")) \
                and not any(part.endswith(".egg-info") for part in path.parts):
            yield path


def source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def pinned_requirements(extras: Iterable[str] = NODE_EXTRAS, skip: Iterable[str] = PROVIDED_BY_AMI) -> list[str]:
    """`name==version` for every distribution ddlc[extras] needs in this environment, transitively, minus `skip`."""
    from packaging.requirements import Requirement

    skip_names = {_normalize(name) for name in skip}
    pins: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [("ddlc", frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, wanted = pending.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UserError(f"node package: dependency '{name}' is not installed in the synth environment "
                            f"({sys.executable}); install ddlc[{','.join(NODE_EXTRAS)}] there first") from None
        if name != "ddlc":
            pins[_normalize(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            dep = _normalize(requirement.name)
            if dep in skip_names:
                continue
            active = [""] + sorted(wanted)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in active
            ):
                continue
            if dep == "ddlc":  # self-referencing extras (ddlc[all] -> ddlc[s3,...])
                pending.append(("ddlc", frozenset(requirement.extras) | wanted))
                continue
            pending.append((dep, frozenset(requirement.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _build_wheel(root: Path, into: Path) -> Path:
    """pip wheel of a copy of the source tree (never writes build/ or *.egg-info into the checkout)."""
    with tempfile.TemporaryDirectory(prefix="ddlc-wheel-src-") as scratch:
        copy = Path(scratch) / "ddlc"
        for path in _source_files(root):
            target = copy / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        env = dict(os.environ, SOURCE_DATE_EPOCH=_REPRODUCIBLE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", str(into), str(copy)],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"node package: building the ddlc wheel failed: {tail[0]}")
    wheels = sorted(into.glob("ddlc-*.whl"))
    if len(wheels) != 1:
        raise UserError(f"node package: expected one ddlc wheel in {into}, found {len(wheels)}")
    return wheels[0]


def build_node_package(cache_dir: Path | None = None) -> Path:
    """A directory holding the wheel, requirements.txt and manifest.json; built once per source content."""
    root = source_root()
    pins = pinned_requirements()
    horovod = (root / "scripts" / HOROVOD_SCRIPT).read_bytes()
    key = hashlib.sha256((source_digest(root) + "\n".join(pins) + sys.version).encode() + horovod).hexdigest()[:20]
    base = cache_dir or Path(tempfile.gettempdir()) / "ddlc-node-package"
    target = base / key
    if _complete(target):
        return target
    shutil.rmtree(target, ignore_errors=True)  # a damaged cache entry is rebuilt, never shipped
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=base))
    try:
        wheel = _build_wheel(root, staging)
        (staging / REQUIREMENTS_FILE).write_text("".join(f"{pin}\n" for pin in pins))
        (staging / HOROVOD_SCRIPT).write_bytes(horovod)
        manifest = {"wheel": wheel.name, "extras": list(NODE_EXTRAS), "provided_by_ami": list(PROVIDED_BY_AMI),
                    "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            staging.rename(target)  # atomic: a concurrent synth either sees the whole directory or builds its own
        except OSError:
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(package_dir: Path) -> bool:
    try:
        manifest = read_manifest(package_dir)
        return all((package_dir / name).is_file() for name in (manifest["wheel"], REQUIREMENTS_FILE, HOROVOD_SCRIPT))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_manifest(package_dir: Path) -> dict:
    return json.loads((package_dir / MANIFEST_FILE).read_text())
