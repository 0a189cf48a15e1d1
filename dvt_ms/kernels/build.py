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

``DVT_MS_KERNEL_SANITIZE=1`` builds (and caches, under a name of its own) a variant instrumented with
AddressSanitizer and UndefinedBehaviorSanitizer, where any finding ends the process with a report. Python itself is
not instrumented, so the sanitizer's runtime must be loaded first: ``LD_PRELOAD=$(python -c "from
dvt_ms.kernels.build import sanitizer_preload; print(sanitizer_preload())")``, as ``scripts/run_tests.sh
--sanitize`` does.
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
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
SANITIZE_VARIABLE = "DVT_MS_KERNEL_SANITIZE"
STALE_SECONDS = 3600  # a temporary file this old belongs to a build that was killed
_LOG = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled or cached (no compiler, the compiler failed, an unwritable cache)."""


def sanitizing() -> bool:
    """Whether ``$DVT_MS_KERNEL_SANITIZE`` asks for the sanitizer build (1 / true / on / yes; unset: no)."""
    return os.environ.get(SANITIZE_VARIABLE, "").strip().lower() in ("1", "true", "on", "yes")


def compile_flags() -> tuple[str, ...]:
    """The compiler flags of the build in use: :data:`FLAGS`, plus :data:`SANITIZE_FLAGS` when sanitizing."""
    return (*FLAGS, *SANITIZE_FLAGS) if sanitizing() else FLAGS


def _runtime_file(compiler: str, name: str) -> str | None:
    try:
        found = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return os.path.realpath(found) if os.path.isabs(found) and os.path.isfile(found) else None


def sanitizer_preload(compiler: str | None = None) -> str:
    """The ``LD_PRELOAD`` value a Python process needs to load the sanitizer build made by ``compiler`` (default:
    :func:`find_compiler`'s): its AddressSanitizer runtime, then the C++ runtime, without which the sanitizer
    cannot intercept the kernels' C++ exceptions (it looks for them when it starts, before Python loads any C++).
    Raises :class:`KernelBuildError` when the compiler has no such runtime."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (set $CXX, or install g++)")
    asan = _runtime_file(compiler, "libasan.so") or _runtime_file(compiler, f"libclang_rt.asan-{platform.machine()}.so")
    if asan is None:
        raise KernelBuildError(f"{Path(compiler).name} has no AddressSanitizer runtime (gcc: install libasan)")
    cxx = _runtime_file(compiler, "libstdc++.so")
    return f"{asan}:{cxx}" if cxx else asan


def _sanitizer_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return any("libasan" in line or "clang_rt.asan" in line for line in maps)
    except OSError:
        return False


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
                 " ".join((*compile_flags(), *links)).encode(), platform.machine().encode(), _cpu_features().encode()):
        key.update(part)
        key.update(b"\0")
    variant = "sanitized-" if sanitizing() else ""
    return cache_dir() / f"dvt_cpu_kernels-{variant}{key.hexdigest()[:16]}.so"


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
        cmd = [compiler, *compile_flags(), *map(str, sources), "-o", tmp, *links]
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
    cannot be written, or for the sanitizer build when this process has not loaded the sanitizer's runtime.
    """
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found (set $CXX, or install g++)")
    if sanitizing() and not _sanitizer_loaded():
        raise KernelBuildError(f"${SANITIZE_VARIABLE} asks for the kernels built with AddressSanitizer, whose runtime "
                               f"this process has not loaded: start it with LD_PRELOAD={sanitizer_preload(compiler)}")
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
