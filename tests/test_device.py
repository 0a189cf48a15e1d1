"""dvt_ms.device: the calls that prepare an Ascend / GPU / CPU context, with MindSpore patched at that boundary."""

from __future__ import annotations

import types

import pytest

from dvt_ms import device
from dvt_ms.device import DeviceError, check_amp_dtype, precision_mode_for, prepare_device


class _FakeMindSpore:
    """Records what dvt_ms.device asks of MindSpore."""

    GRAPH_MODE, PYNATIVE_MODE = 0, 1

    def __init__(self, target: str) -> None:
        self.calls: list[tuple] = []
        self.target = target
        record = self.calls.append
        self.device_context = types.SimpleNamespace(ascend=types.SimpleNamespace(op_precision=types.SimpleNamespace(
            precision_mode=lambda mode: record(("precision_mode", mode)))))
        self.ParallelMode = types.SimpleNamespace(DATA_PARALLEL="data_parallel")

    def set_context(self, **kwargs):
        self.calls.append(("set_context", kwargs))

    def get_context(self, key):
        return {"device_target": self.target}[key]

    def set_device(self, *args):
        self.calls.append(("set_device", *args))

    def set_auto_parallel_context(self, **kwargs):
        self.calls.append(("set_auto_parallel_context", kwargs))


@pytest.fixture
def fake(monkeypatch):
    def install(target: str, soc: str | None = None) -> _FakeMindSpore:
        ms = _FakeMindSpore(target)
        monkeypatch.setattr(device, "ms", ms)
        monkeypatch.setattr(device, "soc_version", lambda: soc)
        return ms
    return install


@pytest.mark.parametrize("soc, mode", [("ascend910", "allow_fp32_to_fp16"), ("ascend910b", "must_keep_origin_dtype"),
                                       ("ascend910_93", "must_keep_origin_dtype")])
def test_ascend_gets_the_precision_mode_that_keeps_float32_where_the_soc_can(fake, soc, mode):
    ms = fake("Ascend", soc)
    ctx = prepare_device("Ascend", 0, 3, amp_level="O2")
    assert ms.calls == [("set_context", {"mode": 0}), ("set_device", "Ascend", 3), ("precision_mode", mode)]
    assert (ctx.target, ctx.soc, ctx.precision_mode, ctx.jit_level) == ("Ascend", soc, mode, None)
    assert precision_mode_for(soc) == mode


def test_jit_level_and_an_explicit_precision_mode_are_passed_on(fake):
    ms = fake("Ascend", "ascend910b")
    ctx = prepare_device("Ascend", 1, jit_level="O2", precision_mode="force_fp32")
    assert ms.calls == [("set_context", {"mode": 1}), ("set_device", "Ascend"), ("precision_mode", "force_fp32"),
                        ("set_context", {"jit_config": {"jit_level": "O2"}})]
    assert ctx.jit_level == "O2"


def test_cpu_and_gpu_get_device_and_mode_only(fake):
    for target in ("CPU", "GPU"):
        ms = fake(target)
        ctx = prepare_device(None, 0, amp_level="O2", amp_dtype="bfloat16")
        assert ms.calls == [("set_context", {"mode": 0}), ("set_device", target)]
        assert ctx.soc is None and ctx.precision_mode is None


def test_bfloat16_is_refused_on_socs_without_it(fake):
    fake("Ascend", "ascend910")
    with pytest.raises(DeviceError, match=r"ascend910\) has no bfloat16"):
        prepare_device("Ascend", 0, amp_level="O2", amp_dtype="bfloat16")
    check_amp_dtype("bfloat16", "O2", "Ascend", "ascend910b")  # 910B has it
    check_amp_dtype("bfloat16", "O0", "Ascend", "ascend910")  # O0 never uses it


def test_bad_settings_name_the_setting(fake):
    fake("CPU")
    for kwargs, match in (({"jit_level": "O9"}, "jit_level"), ({"precision_mode": "fast"}, "precision_mode")):
        with pytest.raises(DeviceError, match=match):
            prepare_device("CPU", 0, **kwargs)
    with pytest.raises(DeviceError, match="device_target"):
        prepare_device("TPU", 0)
    with pytest.raises(DeviceError, match="mode"):
        prepare_device("CPU", 2)


def test_data_parallel_group_joins_with_averaged_gradients(fake, monkeypatch):
    import mindspore.communication as comm

    ms = fake("Ascend", "ascend910b")
    monkeypatch.setattr(comm, "init", lambda: ms.calls.append(("init",)))
    monkeypatch.setattr(comm, "get_rank", lambda: 3)
    monkeypatch.setattr(comm, "get_group_size", lambda: 8)
    assert device.join_data_parallel("Ascend") == (3, 8)
    assert ms.calls == [("init",), ("set_auto_parallel_context", {"parallel_mode": "data_parallel",
                                                                   "gradients_mean": True, "device_num": 8})]


def test_device_id_comes_from_the_environment_except_under_msrun(monkeypatch):
    monkeypatch.setenv("DEVICE_ID", "5")
    assert device.device_id_from_env(None) == 5 and device.device_id_from_env("rank_table") == 5
    assert device.device_id_from_env("msrun") is None
    monkeypatch.setenv("DEVICE_ID", "")
    assert device.device_id_from_env(None) is None


def test_a_precision_mode_mindspore_refuses_is_a_device_error(fake):
    ms = fake("Ascend", "ascend910b")

    def refuse(mode):
        raise RuntimeError("The 'precision_mode' can not be set repeatedly.\nmore")

    ms.device_context.ascend.op_precision.precision_mode = refuse
    with pytest.raises(DeviceError, match=r"cannot set precision_mode must_keep_origin_dtype .* repeatedly"):
        prepare_device("Ascend", 0)
    assert "force_fp16" not in device.PRECISION_MODES  # it would lower the float32 vector ops
