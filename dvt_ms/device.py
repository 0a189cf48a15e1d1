"""One place that prepares MindSpore's device context for every command: the device, the execution mode,
the compile level, the operator precision mode, the bfloat16 check and the data-parallel group.

What it sets on Ascend, and why:

* ``precision_mode``: the precision policy of :mod:`dvt_ms.amp` decides which tensors are float16, so the
  operators must keep the type the graph gives them: ``must_keep_origin_dtype`` (MindSpore's documented
  ``mindspore.device_context.ascend.op_precision.precision_mode``). The Atlas training series (Ascend 910A,
  SoC ``ascend910``) has no float32 matrix unit and defaults to ``allow_fp32_to_fp16``, which keeps vector
  operators (norms, softmax, exp, the loss) in float32 and runs float32 matrix products in float16; that
  default stays there, because ``must_keep_origin_dtype`` would refuse a float32 convolution.
* ``jit_level``: ``auto`` keeps MindSpore's default for the SoC; ``O0``/``O1``/``O2`` are passed on.
  Training compiles static shapes only, so ``O2`` (whole-graph sink) accepts every graph.
* bfloat16: refused on SoCs without it (Ascend 910A and the 310 series), with the SoC named.

MindSpore's context API is touched only through :data:`ms` in this module (plus the SoC query and
``mindspore.communication``, each in one function), so tests patch it here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore as ms

DEVICE_TARGETS = ("Ascend", "GPU", "CPU")
JIT_LEVELS = ("auto", "O0", "O1", "O2")
PRECISION_MODES = ("auto", "must_keep_origin_dtype", "allow_fp32_to_fp16", "force_fp32")
"""The operator precision modes accepted: those that keep float32 vector operators in float32. Modes that
lower them (``force_fp16``, ``allow_mix_precision*``) would break the precision policy's float32 parts and
the exact float32 steps of the mask generator (:mod:`dvt_ms.rng`)."""
NO_BFLOAT16_SOCS = ("ascend910", "ascend310", "ascend310p")
"""SoC versions (as MindSpore reports them) without bfloat16: Ascend 910A and the 310 series."""
NO_FLOAT32_MATRIX_SOCS = ("ascend910",)
"""SoCs whose matrix unit has no float32 (the Atlas training series): keep CANN's ``allow_fp32_to_fp16``."""


class DeviceError(RuntimeError):
    """The device cannot be prepared as asked (unknown target, missing back end, no bfloat16, ...)."""


@dataclass(frozen=True)
class DeviceContext:
    """What :func:`prepare_device` set: the device, its SoC (Ascend), compile level and precision mode."""

    target: str
    mode: int
    soc: str | None = None
    jit_level: str | None = None
    precision_mode: str | None = None


def env_switch(name: str) -> bool:
    """Whether the on/off environment variable ``name`` is on: unset or anything but 0 / false / off / no."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "off", "no")


def soc_version() -> str | None:
    """The Ascend SoC version MindSpore reports (``ascend910``, ``ascend910b``, ...), or ``None`` elsewhere."""
    if ms.get_context("device_target") != "Ascend":
        return None
    from mindspore._c_expression import MSContext  # what MindSpore's own Model uses to tell 910A from 910B

    return str(MSContext.get_instance().get_ascend_soc_version()).lower()


def precision_mode_for(soc: str | None) -> str:
    """The operator precision mode that keeps the precision policy's float32 where the SoC can."""
    return "allow_fp32_to_fp16" if soc in NO_FLOAT32_MATRIX_SOCS else "must_keep_origin_dtype"


def check_amp_dtype(amp_dtype: str, amp_level: str, target: str, soc: str | None) -> None:
    """Refuse ``bfloat16`` under O2/O3 on a device that has none."""
    if amp_dtype == "bfloat16" and amp_level != "O0" and target == "Ascend" and soc in NO_BFLOAT16_SOCS:
        raise DeviceError(f"--amp_dtype bfloat16: this Ascend SoC ({soc}) has no bfloat16; use --amp_dtype float16")


def prepare_device(target: str | None, mode: int = 0, device_id: int | None = None, *, jit_level: str = "auto",
                   precision_mode: str = "auto", amp_level: str = "O0", amp_dtype: str = "float16") -> DeviceContext:
    """Set MindSpore's execution mode and device (``target`` ``None``: the one MindSpore detects), and on
    Ascend the compile level and operator precision mode; check ``amp_dtype`` against the device."""
    if mode not in (0, 1):
        raise DeviceError(f"mode must be 0 (graph) or 1 (PyNative), got {mode}")
    if target is not None and target not in DEVICE_TARGETS:
        raise DeviceError(f"device_target must be one of {', '.join(DEVICE_TARGETS)}, got {target!r}")
    if jit_level not in JIT_LEVELS:
        raise DeviceError(f"jit_level must be one of {', '.join(JIT_LEVELS)}, got {jit_level!r}")
    if precision_mode not in PRECISION_MODES:
        raise DeviceError(f"precision_mode must be one of {', '.join(PRECISION_MODES)}, got {precision_mode!r}")
    ms.set_context(mode=ms.GRAPH_MODE if mode == 0 else ms.PYNATIVE_MODE)
    target = target or ms.get_context("device_target")
    select_device(target, device_id)
    if target != "Ascend":
        return DeviceContext(target, mode)
    soc = soc_version()
    check_amp_dtype(amp_dtype, amp_level, target, soc)
    chosen = precision_mode_for(soc) if precision_mode == "auto" else precision_mode
    level = None if jit_level == "auto" else jit_level
    try:
        ms.device_context.ascend.op_precision.precision_mode(chosen)
        if level is not None:
            ms.set_context(jit_config={"jit_level": level})
    except (RuntimeError, ValueError) as err:  # e.g. a precision mode set before, to another value
        raise DeviceError(f"cannot set precision_mode {chosen} / jit_level {jit_level} on {soc}: "
                          f"{_first_line(err)}") from None
    return DeviceContext(target, mode, soc, level, chosen)


def select_device(target: str, device_id: int | None = None) -> None:
    """``mindspore.set_device(target[, device_id])``. A process that already ran a kernel cannot set its
    device again: on the same device (no id asked) that is no change, so library calls made one after
    another (evaluate, then predict) can each name theirs; anything else is a :class:`DeviceError`."""
    current = ms.get_context("device_target")
    try:
        if device_id is None:
            ms.set_device(target)
        else:
            ms.set_device(target, device_id)
    except (RuntimeError, ValueError) as err:
        if not (target == current and device_id is None):
            moved = f" (this process already runs on {current}: one device per process)" if target != current else ""
            raise DeviceError(f"cannot use device {target}: {_first_line(err)}{moved}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def device_id_from_env(launcher: str | None) -> int | None:
    """``DEVICE_ID`` of the environment, except under msrun (which assigns devices itself)."""
    value = os.environ.get("DEVICE_ID", "")
    return int(value) if launcher != "msrun" and value.isdigit() else None


def join_data_parallel(target: str) -> tuple[int, int]:
    """Join the data-parallel group (HCCL on Ascend, NCCL on GPU, MindSpore's own on CPU: ``init()``
    picks it from the device) with gradients averaged over devices; returns ``(rank, group size)``."""
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=size)
    return rank, size
