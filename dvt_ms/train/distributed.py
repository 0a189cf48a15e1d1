"""Runtime set-up: device, execution mode, data-parallel group (msrun or rank table), seeds."""

from __future__ import annotations

import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ..device import DeviceContext, DeviceError, device_id_from_env, join_data_parallel, prepare_device


class LaunchError(RuntimeError):
    """The process was not started the way the requested run needs (e.g. --distribute without a launcher)."""


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, rank in the data-parallel group and how it was launched."""

    device_target: str
    mode: int
    rank: int = 0
    group_size: int = 1
    launcher: str = "single"  # "single" | "msrun" | "rank_table"
    device: DeviceContext | None = None  # what was set on the device (SoC, jit level, precision mode)

    @property
    def distributed(self) -> bool:
        return self.launcher != "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_launcher(environ: dict[str, str] | None = None) -> str | None:
    """``msrun`` when started by msrun (``MS_ROLE`` / ``MS_SCHED_HOST`` set), ``rank_table`` when
    ``RANK_TABLE_FILE`` is set, otherwise ``None``."""
    env = os.environ if environ is None else environ
    if env.get("MS_ROLE") or env.get("MS_SCHED_HOST"):
        return "msrun"
    if env.get("RANK_TABLE_FILE"):
        return "rank_table"
    return None


def init_runtime(device_target: str | None, mode: int, distribute: bool, seed: int, *, jit_level: str = "auto",
                 precision_mode: str = "auto", amp_level: str = "O0", amp_dtype: str = "float16") -> Runtime:
    """Prepare the device (:func:`dvt_ms.device.prepare_device`), join the data-parallel group when
    ``distribute``, seed everything.

    ``DEVICE_ID`` picks the device (set per rank by ``scripts/run_distribute_train.sh`` for rank-table
    launches, or by hand for one device); msrun assigns devices itself. Every rank gets the same seed,
    so all start from the same weights.
    """
    launcher = detect_launcher()
    if distribute and launcher is None:
        raise LaunchError("--distribute True needs a launcher: start the run with scripts/run_distribute_train.sh "
                          "(msrun --worker_num=N ...) or export RANK_TABLE_FILE, RANK_ID, RANK_SIZE and DEVICE_ID "
                          "for every process")
    try:
        context = prepare_device(device_target, mode, device_id_from_env(launcher), jit_level=jit_level,
                                 precision_mode=precision_mode, amp_level=amp_level, amp_dtype=amp_dtype)
    except DeviceError as err:
        raise ValueError(str(err)) from None
    rank, size = 0, 1
    if distribute:
        try:
            rank, size = join_data_parallel(context.target)
        except (RuntimeError, ValueError) as err:
            raise LaunchError(f"cannot join the data-parallel group ({launcher} launch on {context.target}): "
                              f"{err}") from None
    ms.set_seed(seed)
    return Runtime(context.target, mode, rank, size, launcher if distribute else "single", context)


def grad_reducer(runtime: Runtime, params) -> nn.Cell | None:
    """The gradient all-reduce (mean over devices) of a data-parallel run, ``None`` on one device."""
    if not runtime.distributed or runtime.group_size == 1:
        return None
    return nn.DistributedGradReducer(params, mean=True, degree=runtime.group_size)


class _Collective(nn.Cell):
    """One collective op on one tensor, as a cell (MindSpore runs collectives inside a compiled cell).
    ``takes_tuple``: the op takes and returns a tuple of tensors (Broadcast)."""

    def __init__(self, op, takes_tuple: bool = False) -> None:
        super().__init__()
        self.op, self.takes_tuple = op, takes_tuple

    def construct(self, x):
        if self.takes_tuple:
            return self.op((x,))[0]
        return self.op(x)


def sum_over_devices(runtime: Runtime, values):
    """Element-wise sum of a numeric vector over all devices (float32; the values themselves on one device)."""
    values = np.asarray(values, dtype=np.float32)
    if not runtime.distributed or runtime.group_size == 1:
        return values
    return _Collective(ops.AllReduce())(ms.Tensor(values)).asnumpy()


def gather_over_devices(runtime: Runtime, values) -> np.ndarray:
    """Every device's float32 vector ``values`` (the same length everywhere), stacked in rank order:
    ``[group_size, len(values)]`` (one row on one device)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if not runtime.distributed or runtime.group_size == 1:
        return values[None]
    return _Collective(ops.AllGather())(ms.Tensor(values)).asnumpy().reshape(runtime.group_size, -1)


def weight_spread(runtime: Runtime, params) -> float:
    """Largest difference of any weight between two devices (0.0 when all replicas are identical;
    always 0.0 on one device). Data-parallel replicas must stay bit-identical; this checks it."""
    if not runtime.distributed or runtime.group_size == 1:
        return 0.0
    # Only sum all-reduces exist on every backend: compare with rank 0's copy, then gather the maxima.
    local = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in params])
    first = _Collective(ops.Broadcast(0), takes_tuple=True)(ms.Tensor(local)).asnumpy()
    own = np.asarray([np.max(np.abs(local - first)) if local.size else 0.0], np.float32)
    return float(_Collective(ops.AllGather())(ms.Tensor(own)).asnumpy().max())
