"""Compile the fused CPU kernels on first use and cache the shared library.

The library is built from ``cpu_kernels.cc`` (element-wise kernels, the soft split, AdamW) and, where
MindSpore ships oneDNN (``mindspore/lib/libdnnl.so*``, the library its own CPU matrix kernels use),
``layer_kernels.cc`` (whole fused layers: the transformer blocks of an exit and the T2T token performer, whose
matrix products call oneDNN's ``dnnl_sgemm``). The system C++ compiler (``$CXX``, else ``g++``, else ``c++``,
else ``clang++``) builds for the processor it runs on (``-march=native``). The result is cached under
``$DVT_MS_KERNEL_CACHE`` (default ``~/.cache/dvt_ms/kernels``) in a file whose name hashes the sources, the
compiler, the flags (oneDNN's path included) and the processor's features, so that a changed source, compiler
or machine never loads a stale build. Concurrent processes (data-parallel workers) take a file lock, so that one of them
builds and the others load its result; the build writes to a temporary file and renames it into place, and
temporary files that a killed build left behind are removed by the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "cpu_kernels.cc"
LAYER_SOURCE = HERE / "layer_kernels.cc"
HEADERS = (HERE / "kernel_common.h",)
# -ffp-contract=off: no fused multiply-adds, so the AdamW kernel rounds as the stock ops do (same bits);
# -fno-math-errno / -fno-trapping-math: sqrt and the clamps of exp vectorise (3-4x faster GELU and AdamW)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared",
         "-fopenmp-simd", "-pthread", "-std=c++17")
STALE_SECONDS = 3600  # a temporary file this old belongs to a build that was killed
_LOG = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled or cached (no compiler, the compiler failed, an unwritable cache)."""


def find_compiler() -> str | None:
    """Path of the C++ compiler to use, or ``None`` when there is none."""
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def onednn_library() -> Path | None:
    """The oneDNN shared library MindSpore ships (and loads for its CPU kernels), or ``None``: then the
    library is built without the layer kernels."""
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = sorted(Path(next(iter(spec.submodule_search_locations))).joinpath("lib").glob("libdnnl.so*"))
    real = [p for p in libs if p.is_file()]
    return real[-1].resolve() if real else None


def cache_dir() -> Path:
    """Where built libraries are kept (``$DVT_MS_KERNEL_CACHE`` or ``~/.cache/dvt_ms/kernels``)."""
    return Path(os.environ.get("DVT_MS_KERNEL_CACHE", Path.home() / ".cache" / "dvt_ms" / "kernels"))


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _sources_and_links() -> tuple[list[Path], list[str]]:
    """The sources to compile and the linker arguments: the layer kernels only with oneDNN."""
    onednn = onednn_library()
    if onednn is None:
        return [SOURCE], []
    return [SOURCE, LAYER_SOURCE], [f"-L{onednn.parent}", f"-l:{onednn.name}", f"-Wl,-rpath,{onednn.parent}"]


def has_layer_kernels() -> bool:
    """Whether the library holds the fused layer kernels (MindSpore ships oneDNN)."""
    return onednn_library() is not None


def library_path(compiler: str) -> Path:
    """The cache path of the library built by ``compiler`` from the current sources on this machine."""
    sources, links = _sources_and_links()
    key = hashlib.sha256()
    for part in (*(p.read_bytes() for p in (*sources, *HEADERS)), _compiler_version(compiler).encode(),
                 " ".join((*FLAGS, *links)).encode(), platform.machine().encode(), _cpu_features().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"dvt_cpu_kernels-{key.hexdigest()[:16]}.so"


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    with open(folder / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_temporaries(folder: Path) -> None:
    now = time.time()
    for tmp in folder.glob("dvt_cpu_kernels-*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()


def _compile(compiler: str, target: Path) -> None:
    sources, links = _sources_and_links()
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, *map(str, sources), "-o", tmp, *links]
        _LOG.info("building CPU kernels: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            names = ", ".join(p.name for p in sources)
            raise KernelBuildError(f"{Path(compiler).name} failed to build {names}:\n{proc.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except subprocess.SubprocessError as err:
        raise KernelBuildError(f"could not build {SOURCE.name}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_library() -> Path:
    """Return the path of the compiled kernel library, building it first if it is not cached.

    Raises :class:`KernelBuildError` when no compiler is found, compilation fails or the cache folder
    cannot be written.
    """
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (set $CXX, or install g++)")
    target = library_path(compiler)
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _build_lock(target.parent):
            if target.is_file():  # another process built it while this one waited
                return target
            _remove_stale_temporaries(target.parent)
            _compile(compiler, target)
    except OSError as err:
        raise KernelBuildError(f"could not build or cache the kernels in {target.parent}: {err}") from err
    return target
