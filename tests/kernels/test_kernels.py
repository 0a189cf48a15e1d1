"""The fused CPU kernels: same numbers as MindSpore's stock ops, built once and cached, clean fallback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from dvt_ms import kernels
from dvt_ms.kernels import build
from dvt_ms.models import DVTCascade
from dvt_ms.models.layers import LayerNorm, relation_resize_matrix
from dvt_ms.models.layers.mlp import GELU
from tests.helpers import tiny_spec, tiny_t2t_spec


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """Kernels built into an empty cache folder; the process-wide library choice is reset around the test. Not in
    the sanitizer run, which checks what the kernels do, not how they are built."""
    if build.sanitizing():
        pytest.skip("builds the library: not part of the sanitizer run")
    monkeypatch.setenv("DVT_MS_KERNEL_CACHE", str(tmp_path))
    kernels._library.cache_clear()
    yield tmp_path
    kernels._library.cache_clear()


def built_files(folder) -> list[str]:
    """What a build left in the cache folder, besides the lock file every build takes."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".build.lock")


def stock_and_fused(cell_factory, x: np.ndarray):
    with kernels.use_kernels(False):
        stock = cell_factory()
    with kernels.use_kernels(True):
        fused = cell_factory()
    assert stock.fused is None and fused.fused is not None
    for cell in (stock, fused):
        cell.set_train(False)
    for p_stock, p_fused in zip(stock.get_parameters(), fused.get_parameters(), strict=True):
        p_fused.set_data(p_stock.data)
    return stock(ms.Tensor(x)).asnumpy(), fused(ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 50, 256), (1, 17, 588)])
@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_layer_norm_matches_stock_op(shape, eps, graph_mode):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * 3 + 1).astype(np.float32)

    def make():
        cell = LayerNorm(shape[-1], eps)
        cell.weight.set_data(ms.Tensor(rng.randn(shape[-1]).astype(np.float32)))
        cell.bias.set_data(ms.Tensor(rng.randn(shape[-1]).astype(np.float32)))
        return cell

    stock, fused = stock_and_fused(make, x)
    np.testing.assert_allclose(fused, stock, rtol=1e-5, atol=2e-5)


def test_gelu_matches_exact_erf_gelu(graph_mode):
    x = np.concatenate([np.linspace(-12, 12, 4000), np.random.RandomState(1).randn(3000) * 4]).astype(np.float32)
    stock, fused = stock_and_fused(GELU, x.reshape(7, 1000))
    np.testing.assert_allclose(fused, stock, rtol=1e-6, atol=3e-7)
    exact = ops.gelu(ms.Tensor(x), approximate="none").asnumpy().reshape(7, 1000)
    np.testing.assert_allclose(fused, exact, rtol=1e-6, atol=3e-7)


@pytest.mark.parametrize("channels_last", [False, True], ids=["image", "token_grid"])
@pytest.mark.parametrize("side, kernel, stride, padding", [(9, 3, 2, 1), (16, 7, 4, 2), (12, 5, 3, 0), (30, 14, 8, 3)])
def test_unfold_matches_stock_unfold_tokens_first(side, kernel, stride, padding, channels_last, graph_mode):
    channels, out = 3, (side + 2 * padding - kernel) // stride + 1
    x = np.random.RandomState(0).randn(2, channels, side, side).astype(np.float32)
    expected = ops.unfold(ms.Tensor(x), kernel, 1, padding, stride).swapaxes(1, 2).asnumpy()
    with kernels.use_kernels(True):
        op = kernels.unfold_op(out * out, channels * kernel * kernel)
    inputs = x.transpose(0, 2, 3, 1).reshape(2, side * side, channels) if channels_last else x
    geometry = ms.Tensor(np.array([int(channels_last), side, kernel, stride, padding], np.int32))
    got = op(ms.Tensor(np.ascontiguousarray(inputs)), geometry).asnumpy()
    assert got.shape == expected.shape == (2, out * out, channels * kernel * kernel)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("up, down", [(4, 6), (7, 10), (10, 14)])
def test_sandwich_matches_dense_resize(up, down, graph_mode):
    p = relation_resize_matrix(up, down)
    x = np.random.RandomState(0).randn(2, 5, up * up + 1, up * up + 1).astype(np.float32)
    with kernels.use_kernels(True):
        op = kernels.sandwich_op()
    got = op(ms.Tensor(x), ms.Tensor(p)).asnumpy()
    np.testing.assert_allclose(got, p @ x @ p.T, rtol=1e-5, atol=1e-5)


def test_float16_takes_the_stock_ops(graph_mode):
    with kernels.use_kernels(True):
        cell = LayerNorm(8)
    x = ms.Tensor(np.random.RandomState(0).randn(2, 3, 8).astype(np.float16))
    assert cell(x).dtype == ms.float16  # the fused kernel is float32 only


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest deviation relative to the largest magnitude of ``expected``."""
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


class Weighted(nn.Cell):
    """``sum(cell(*inputs) * cotangent)``: its gradients are the cell's backward applied to ``cotangent``."""

    def __init__(self, cell, cotangent: np.ndarray) -> None:
        super().__init__()
        self.cell, self.cotangent = cell, ms.Tensor(cotangent)

    def construct(self, *inputs):
        return (self.cell(*inputs) * self.cotangent).sum()


def gradients(cell, inputs: list[np.ndarray], cotangent: np.ndarray, params: bool = True) -> list[np.ndarray]:
    """Gradients of ``Weighted(cell)`` with respect to the first input and (``params``) every parameter."""
    net = Weighted(cell, cotangent)
    weights = ms.ParameterTuple(cell.trainable_params()) if params and cell.trainable_params() else None
    tensors = [ms.Tensor(a) for a in inputs]
    grad = ms.grad(net, grad_position=0, weights=weights)(*tensors)
    flat = [grad[0], *grad[1]] if weights is not None else [grad]
    return [g.asnumpy() for g in flat]


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 50, 256), (4, 197, 384)])
def test_layer_norm_gradients_match_stock_op(shape, graph_mode):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * 3 + 1).astype(np.float32)
    cotangent = rng.randn(*shape).astype(np.float32)
    weight, bias = rng.randn(2, shape[-1]).astype(np.float32)
    grads = []
    for enabled in (False, True):
        with kernels.use_kernels(enabled):
            cell = LayerNorm(shape[-1], 1e-6)
        assert (cell.fused is not None) == enabled
        cell.weight.set_data(ms.Tensor(weight))
        cell.bias.set_data(ms.Tensor(bias))
        cell.set_train(True)
        grads.append(gradients(cell, [x], cotangent))
    for stock, fused in zip(*grads, strict=True):  # x, weight, bias
        assert relative_error(fused, stock) <= 1e-5


def test_gelu_gradient_matches_stock_op(graph_mode):
    rng = np.random.RandomState(0)
    x = np.concatenate([np.linspace(-9, 9, 3000), rng.randn(3000) * 3]).astype(np.float32).reshape(4, 1500)
    cotangent = rng.randn(*x.shape).astype(np.float32)
    grads = []
    for enabled in (False, True):
        with kernels.use_kernels(enabled):
            cell = GELU()
        cell.set_train(True)
        grads.append(gradients(cell, [x], cotangent, params=False)[0])
    assert relative_error(grads[1], grads[0]) <= 1e-5
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5)


class StockUnfold(nn.Cell):
    def __init__(self, kernel: int, stride: int, padding: int, side: int, channels_last: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.side, self.channels_last = side, channels_last

    def construct(self, x):
        if self.channels_last:
            x = x.swapaxes(1, 2).reshape(x.shape[0], x.shape[2], self.side, self.side)
        return ops.unfold(x, self.kernel, 1, self.padding, self.stride).swapaxes(1, 2)


class FusedUnfold(nn.Cell):
    def __init__(self, op, geometry: np.ndarray) -> None:
        super().__init__()
        self.op, self.geometry = op, ms.Tensor(geometry)

    def construct(self, x):
        return self.op(x, self.geometry)


@pytest.mark.parametrize("channels_last", [False, True], ids=["image", "token_grid"])
@pytest.mark.parametrize("side, kernel, stride, padding", [(9, 3, 2, 1), (16, 7, 4, 2), (30, 14, 8, 3)])
def test_unfold_gradient_is_fold(side, kernel, stride, padding, channels_last, graph_mode):
    channels, out = 3, (side + 2 * padding - kernel) // stride + 1
    rng = np.random.RandomState(0)
    x = rng.randn(2, channels, side, side).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(2, side * side, channels))
    cotangent = rng.randn(2, out * out, channels * kernel * kernel).astype(np.float32)
    with kernels.use_kernels(True):
        op = kernels.unfold_op(out * out, channels * kernel * kernel)
    geometry = np.array([int(channels_last), side, kernel, stride, padding], np.int32)
    stock = gradients(StockUnfold(kernel, stride, padding, side, channels_last), [x], cotangent, params=False)[0]
    fused = gradients(FusedUnfold(op, geometry), [x], cotangent, params=False)[0]
    assert fused.shape == x.shape
    assert relative_error(fused, stock) <= 1e-5


@pytest.mark.parametrize("geometry", [[0, 16, 7, 4, 2], [0, 9, 3, 0, 1], [0, 9, 30, 2, 1], [1, 9, 3, 2, 1]],
                         ids=["other_grid", "zero_stride", "kernel_larger_than_image", "tokens_for_an_image"])
def test_unfold_and_fold_refuse_a_geometry_that_disagrees_with_the_shapes(geometry, graph_mode):
    """A geometry tensor that does not give the declared shapes (another grid, a zero stride, a kernel larger
    than the padded image, a token-grid layout for an image) makes the soft split and its backward return an
    error code, which MindSpore raises, instead of reading or writing past their buffers."""
    x, dy = ms.Tensor(np.ones((2, 3, 9, 9), np.float32)), ms.Tensor(np.ones((2, 25, 27), np.float32))
    with kernels.use_kernels(True):
        op = kernels.unfold_op(25, 27)
        fold = kernels._custom("dvt_unfold_grad", lambda x, g, dy: x, lambda x, g, dy: x)
    good = ms.Tensor(np.array([0, 9, 3, 2, 1], np.int32))
    assert op(x, good).shape == (2, 25, 27) and fold(x, good, dy).shape == (2, 3, 9, 9)
    bad = ms.Tensor(np.array(geometry, np.int32))
    with pytest.raises(RuntimeError, match="dvt_unfold"):
        op(x, bad).asnumpy()
    with pytest.raises(RuntimeError, match="dvt_unfold_grad"):
        fold(x, bad, dy).asnumpy()


class Sandwich(nn.Cell):
    def __init__(self, op, p: np.ndarray) -> None:
        super().__init__()
        self.op, self.p = op, ms.Tensor(p)

    def construct(self, x):
        if self.op is None:
            return ops.matmul(ops.matmul(self.p, x), self.p.swapaxes(0, 1))
        return self.op(x, self.p)


@pytest.mark.parametrize("up, down", [(4, 6), (7, 10), (10, 14)])
def test_sandwich_gradient_matches_dense_resize(up, down, graph_mode):
    p = relation_resize_matrix(up, down)
    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, up * up + 1, up * up + 1).astype(np.float32)
    cotangent = rng.randn(2, 5, down * down + 1, down * down + 1).astype(np.float32)
    with kernels.use_kernels(True):
        op = kernels.sandwich_op()
    stock = gradients(Sandwich(None, p), [x], cotangent, params=False)[0]
    fused = gradients(Sandwich(op, p), [x], cotangent, params=False)[0]
    assert relative_error(fused, stock) <= 1e-5


def test_cascade_outputs_with_and_without_kernels_agree(graph_mode):
    x = ms.Tensor(np.random.RandomState(0).randn(3, 3, 32, 32).astype(np.float32))
    outputs = []
    for enabled in (False, True):
        ms.set_seed(0)
        with kernels.use_kernels(enabled):
            model = DVTCascade(tiny_spec())
        model.set_train(False)
        outputs.append([o.asnumpy() for o in model(x)])
    for stock, fused in zip(*outputs, strict=True):
        np.testing.assert_allclose(fused, stock, rtol=1e-5, atol=1e-5)


class TotalLoss(nn.Cell):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def construct(self, images, targets):
        return self.net(images, targets)[0]


@pytest.mark.exhaustive
@pytest.mark.parametrize("make_spec", [tiny_spec, tiny_t2t_spec], ids=["deit", "t2t"])
def test_cascade_training_gradients_with_and_without_kernels_agree(make_spec, graph_mode):
    """The summed multi-exit loss of a tiny cascade in train mode (no dropout): every parameter's gradient
    from the kernel path equals the stock-op path's."""
    from dvt_ms.train.loss import NetWithLoss

    rng = np.random.RandomState(0)
    spec = make_spec()
    x = ms.Tensor(rng.randn(3, 3, spec.img_size, spec.img_size).astype(np.float32))
    targets = ms.Tensor(np.eye(spec.num_classes, dtype=np.float32)[rng.randint(0, spec.num_classes, 3)])
    grads = []
    for enabled in (False, True):
        ms.set_seed(0)
        with kernels.use_kernels(enabled):
            model = DVTCascade(spec)
        model.set_train(True)
        weights = ms.ParameterTuple(model.trainable_params())
        grad = ms.grad(TotalLoss(NetWithLoss(model)), grad_position=None, weights=weights)(x, targets)
        grads.append([g.asnumpy() for g in grad])
    assert len(grads[0]) == len(grads[1]) > 20
    # Within 1e-5 relative, plus 1e-6 of the model's largest gradient absolute: some gradients are small sums of
    # large cancelling terms (a bias added to every logit before a softmax is zero in exact arithmetic).
    scale = max(np.abs(g).max() for g in grads[0])
    for s, f in zip(*grads, strict=True):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.slow
def test_dynamic_batch_switches_the_kernels_off(graph_mode):
    with kernels.use_kernels(True):
        model = DVTCascade(tiny_spec())
    model.set_train(False)
    fused = [cell for _, cell in model.cells_and_names() if getattr(cell, "fused", None) is not None]
    assert fused, "the tiny model has LayerNorm and GELU cells that take kernels on CPU"
    model.set_inputs(ms.Tensor(shape=[None, 3, 32, 32], dtype=ms.float32))
    assert all(cell.fused is None for cell in fused)
    assert model(ms.Tensor(np.zeros((2, 3, 32, 32), np.float32)))[0].shape == (2, 10)


def test_switch_by_environment(monkeypatch):
    monkeypatch.setenv("DVT_MS_KERNELS", "0")
    assert not kernels.kernels_enabled()
    assert kernels.gelu_op() is None
    with kernels.use_kernels(True):
        assert kernels.kernels_enabled()
    monkeypatch.setenv("DVT_MS_KERNELS", "1")
    assert kernels.kernels_enabled()


def test_use_kernels_is_local_to_its_thread_and_nests(monkeypatch):
    """``use_kernels`` is a context variable: a block in one thread does not switch another thread's cells, and
    nested blocks restore the outer choice."""
    import threading

    monkeypatch.setenv("DVT_MS_KERNELS", "1")
    inside, seen = threading.Event(), []
    release = threading.Event()

    def other_thread():
        with kernels.use_kernels(False):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    inside.wait(10)
    seen.append(kernels.kernels_enabled())  # this thread: still the environment's choice
    release.set()
    thread.join()
    with kernels.use_kernels(False):
        with kernels.use_kernels(True):
            seen.append(kernels.kernels_enabled())
        seen.append(kernels.kernels_enabled())
    seen.append(kernels.kernels_enabled())
    assert seen == [True, True, False, True]


@pytest.mark.slow
def test_library_is_built_once_and_cached(fresh_library):
    first = build.build_library()
    assert first.parent == fresh_library and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert build.build_library() == first and first.stat().st_mtime_ns == mtime
    assert built_files(fresh_library) == [first.name]  # no temporary file left behind


def test_no_compiler_falls_back_to_stock_ops_with_a_warning(fresh_library, monkeypatch, caplog):
    monkeypatch.setattr(build, "find_compiler", lambda: None)
    with caplog.at_level(logging.WARNING), kernels.use_kernels(True):
        assert kernels.layer_norm_op() is None
        cell = LayerNorm(4)
    assert cell.fused is None
    assert "no C++ compiler found" in caplog.text
    assert built_files(fresh_library) == []


def test_failing_compiler_is_a_clear_error_and_leaves_nothing(fresh_library, monkeypatch, tmp_path_factory):
    fake = tmp_path_factory.mktemp("bin") / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'broken-c++: internal error' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(build.KernelBuildError, match=r"broken-c\+\+ failed to build cpu_kernels\.cc"):
        build.build_library()
    assert built_files(fresh_library) == []


def test_unwritable_cache_falls_back_to_stock_ops_with_a_warning(tmp_path, monkeypatch, caplog):
    """A cache folder that cannot be created (here: below a file) is a build error, so the model takes the stock
    ops with one warning instead of failing."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("DVT_MS_KERNEL_CACHE", str(blocker / "kernels"))
    kernels._library.cache_clear()
    try:
        with pytest.raises(build.KernelBuildError, match="could not build or cache"):
            build.build_library()
        with caplog.at_level(logging.WARNING), kernels.use_kernels(True):
            assert LayerNorm(4).fused is None
        assert "fused CPU kernels unavailable" in caplog.text
    finally:
        kernels._library.cache_clear()


@pytest.mark.slow
def test_concurrent_processes_build_once(fresh_library, tmp_path_factory):
    """Two processes asking for the library at the same time: one compiles, the other waits for it (the build
    lock) and loads the same file."""
    compiler = build.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    calls = tmp_path_factory.mktemp("calls") / "calls.txt"
    wrapper = tmp_path_factory.mktemp("bin") / "counting-c++"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *--version*) ;; *) echo build >> {calls} ;; esac\n'
                       f'exec {compiler} "$@"\n')
    wrapper.chmod(0o755)
    code = "from dvt_ms.kernels import build; print(build.build_library())"
    env = dict(os.environ, CXX=str(wrapper), DVT_MS_KERNEL_CACHE=str(fresh_library))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert paths[0] == paths[1] and os.path.isfile(paths[0])
    assert calls.read_text().splitlines() == ["build"]
    assert built_files(fresh_library) == [os.path.basename(paths[0])]


def test_layer_norm_refuses_weights_that_do_not_match_the_last_axis(graph_mode):
    """Weights shorter than the normalised axis make the kernel return an error code, which MindSpore raises,
    instead of reading past them."""
    with kernels.use_kernels(True):
        op = kernels.layer_norm_op()
    x, eps = ms.Tensor(np.ones((2, 5, 8), np.float32)), ms.Tensor(np.array([1e-6], np.float32))
    w = ms.Tensor(np.ones(8, np.float32))
    assert op(x, w, w, eps).shape == (2, 5, 8)
    short = ms.Tensor(np.ones(7, np.float32))
    with pytest.raises(RuntimeError, match="dvt_layer_norm"):
        op(x, short, short, eps).asnumpy()


def test_gelu_and_layer_norm_propagate_nan(graph_mode):
    """NaN and inf inputs give NaN / inf outputs where the stock ops give them, without undefined behaviour in
    the kernels' exp (a NaN exponent is never cast to an integer)."""
    x = np.array([[np.nan, np.inf, 1.0, -2.0, 0.5, 3.0, -1.0, 2.0]], np.float32)
    with kernels.use_kernels(True):
        gelu, norm = GELU(), LayerNorm(8)
    y = gelu(ms.Tensor(x)).asnumpy()
    assert np.isnan(y[0, 0]) and y[0, 1] == np.inf
    np.testing.assert_allclose(y[0, 2:], ops.gelu(ms.Tensor(x[:, 2:]), approximate="none").asnumpy()[0], rtol=1e-6,
                               atol=3e-7)
    assert np.isnan(norm(ms.Tensor(x)).asnumpy()).all()  # a NaN in a row makes its statistics NaN


def test_cache_key_changes_with_the_compiler(fresh_library, monkeypatch):
    compiler = build.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler on this machine")
    path = build.library_path(compiler)
    monkeypatch.setattr(build, "_compiler_version", lambda _: "another compiler 1.0")
    assert build.library_path(compiler) != path
    assert os.path.dirname(path) == str(fresh_library)
