"""The kernels' contract with their callers: every entry point checks the dtypes and shapes it is handed and says
which argument is wrong (a :class:`~dvt_ms.kernels.KernelError`), the saved-buffer sizes come from the library,
and the worker pool's size follows ``$DVT_MS_KERNEL_THREADS``."""

from __future__ import annotations

import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from dvt_ms import kernels
from dvt_ms.command import run_command

EPS = ms.Tensor(np.array([1e-6], np.float32))


def f32(*shape: int) -> ms.Tensor:
    return ms.Tensor(np.random.RandomState(0).randn(*shape).astype(np.float32))


def enabled(factory, *args):
    with kernels.use_kernels(True):
        op = factory(*args)
    if op is None:
        pytest.skip("the kernels are not in use here")
    return op


def test_a_float16_layer_norm_weight_is_refused_by_name(graph_mode):
    """A float16 weight with a float32 input: read as float32 it would run past its buffer; the kernel refuses it,
    naming the argument, what it expects and what it got."""
    op = enabled(kernels.layer_norm_op)
    x, w = f32(2, 5, 8), f32(8)
    np.testing.assert_array_equal(op(x, w, w, EPS).shape, (2, 5, 8))
    half = ms.Tensor(np.ones(8, np.float16))
    with pytest.raises(kernels.KernelError) as caught, kernels.kernel_errors():
        op(x, half, w, EPS).asnumpy()
    message = str(caught.value)
    assert message.startswith("dvt_layer_norm: ") and "'weight'" in message
    assert "float32" in message and "float16" in message
    assert isinstance(caught.value.__cause__, RuntimeError)  # MindSpore's own report, kept as the cause


def test_an_int32_input_to_gelu_is_refused(graph_mode):
    op = enabled(kernels.gelu_op)
    with pytest.raises(kernels.KernelError, match=r"dvt_gelu: .*float32.*int32"), kernels.kernel_errors():
        op(ms.Tensor(np.ones((4, 3), np.int32))).asnumpy()


@pytest.mark.skipif(not kernels.has_layer_kernels(), reason="MindSpore ships no oneDNN here")
def test_a_float16_block_weight_is_refused_naming_the_block(graph_mode):
    op = enabled(kernels.block_stack_op, 4, False, True)
    dim, hidden, tokens = 32, 64, 17
    ph = ms.Tensor(np.zeros(1, np.float32))
    config = ms.Tensor(np.array([1, 4, 1, 0, 0, 0, 1, 0, 0], np.int32))
    weights = [f32(dim), f32(dim), f32(3 * dim, dim), f32(3 * dim), f32(dim, dim), f32(dim), f32(dim), f32(dim),
               f32(hidden, dim), f32(hidden), f32(dim, hidden), f32(dim)] + [ph] * 6
    inputs = [f32(2, tokens, dim), ph, ph, ph, ph, config, EPS]
    assert tuple(op(*inputs, *weights)[0].shape) == (2, tokens, dim)
    weights[8] = ms.Tensor(np.ones((hidden, dim), np.float16))  # fc1's weight
    with pytest.raises(kernels.KernelError) as caught, kernels.kernel_errors():
        op(*inputs, *weights)[0].asnumpy()
    message = str(caught.value)
    assert message.startswith("dvt_block_stack: ") and "block 0" in message and "float16" in message


def test_the_last_error_is_the_failed_call_and_other_errors_pass_unchanged(graph_mode):
    op = enabled(kernels.layer_norm_op)
    with pytest.raises(kernels.KernelError), kernels.kernel_errors():
        op(f32(2, 8), f32(7), f32(7), EPS).asnumpy()
    assert kernels.last_kernel_error().startswith("dvt_layer_norm: ")
    with pytest.raises(ValueError, match="not a kernel"), kernels.kernel_errors():
        raise ValueError("not a kernel")
    assert kernels.kernel_error_from(RuntimeError("something else")) is None


def test_a_command_reports_the_kernels_message(graph_mode, capsys):
    """What a user sees when a kernel refuses its arguments inside a command: the kernel's one line."""
    op = enabled(kernels.layer_norm_op)

    def run(_):
        op(f32(2, 8), ms.Tensor(np.ones(8, np.float16)), f32(8), EPS).asnumpy()

    assert run_command("dvt-test", lambda: None, run, ()) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "KernelError: dvt_layer_norm: " in last and "float16" in last


@pytest.mark.skipif(not kernels.has_layer_kernels(), reason="MindSpore ships no oneDNN here")
def test_saved_buffer_sizes_come_from_the_library():
    enabled(kernels.layer_norm_op)  # the library in use
    one = kernels._saved_floats("dvt_block_stack_saved_floats", 2, 17, 32, 4, 64, 0, 0, 0, 0, 1)
    assert one > 0
    assert kernels._saved_floats("dvt_block_stack_saved_floats", 2, 17, 32, 4, 64, 0, 0, 0, 0, 3) == 3 * one
    reuse = kernels._saved_floats("dvt_block_stack_saved_floats", 2, 17, 32, 4, 64, 10, 24, 48, 8, 1)
    assert reuse > one
    with pytest.raises(kernels.KernelError, match="no block stack has these sizes"):
        kernels._saved_floats("dvt_block_stack_saved_floats", 2, 17, 30, 4, 64, 0, 0, 0, 0, 1)  # 30 % 4 heads
    with pytest.raises(kernels.KernelError, match="no token performer"):
        kernels._saved_floats("dvt_performer_saved_floats", 2, 0, 3, 64, 32)


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", str(kernels.MAX_THREADS + 1)])
def test_a_bad_thread_count_is_refused(text, monkeypatch):
    monkeypatch.setenv(kernels.THREADS_VARIABLE, text)
    with pytest.raises(ValueError, match=kernels.THREADS_VARIABLE):
        kernels.kernel_threads()


def test_the_pool_has_the_threads_asked_for_and_the_same_results():
    """Each count in its own process (the pool is made once per process); the outputs do not depend on it."""
    code = ("import numpy as np, mindspore as ms\n"
            "from dvt_ms import kernels\n"
            "from dvt_ms.models.layers.mlp import GELU\n"
            "with kernels.use_kernels(True):\n"
            "    gelu = GELU()\n"
            "x = np.random.RandomState(0).randn(64, 4096).astype(np.float32)\n"
            "y = gelu(ms.Tensor(x)).asnumpy()\n"
            "print(kernels.pool_threads(), float(np.float64(y).sum()).hex())\n")
    results = []
    for threads in ("1", "3"):
        env = {**os.environ, kernels.THREADS_VARIABLE: threads}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(out.stdout.split())
    if results[0][0] == "None":
        pytest.skip("the kernels are not in use here")
    assert [r[0] for r in results] == ["1", "3"]
    assert results[0][1] == results[1][1]
