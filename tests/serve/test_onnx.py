"""ONNX export and ONNX Runtime prediction: every exit equals the MindSpore checkpoint, dvt-predict decides the
same on ONNX Runtime as on the checkpoint, and the failures (tampered file, missing extra, wrong runtime) are
clean errors."""

from __future__ import annotations

import importlib.util
import json
import os

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.data.transforms import EvalTransform
from dvt_ms.inference.operating_point import OperatingPoint
from dvt_ms.models import create_model
from dvt_ms.serve import read_manifest
from dvt_ms.serve.export import export_model
from dvt_ms.serve.export import main as export_main
from dvt_ms.serve.onnx_export import OPSET, TOLERANCE
from dvt_ms.serve.onnx_runtime import OnnxStages
from dvt_ms.serve.predict import JSONL_NAME
from dvt_ms.serve.predict import main as predict_main
from tests.helpers import REPO, importable

pytestmark = pytest.mark.skipif(not (importable("onnx") and importable("onnxruntime") and importable("torch")),
                                reason='needs the onnx extra (pip install -e ".[onnx]")')

DEMO_CKPT = os.path.join(REPO, "demo", "dvt_digits_demo.ckpt")
TINY = {"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}


def _export_onnx(model, folder, name: str):
    point = OperatingPoint(np.zeros(model.num_exits), "test")
    return export_model(model, str(folder), model_name=name, model_args={}, point=point,
                        transform=EvalTransform(model.spec.img_size, 1.0), formats=("onnx",))


def _worst_difference(model, stages: OnnxStages, batch: int) -> float:
    """Max over exits of max |ONNX Runtime - MindSpore| / max |MindSpore| of the logits on a random batch."""
    spec = model.spec
    images = np.random.default_rng(batch).standard_normal((batch, spec.in_chans, spec.img_size, spec.img_size))
    x = ms.Tensor(images.astype(np.float32))
    worst, state, tokens, relations = 0.0, None, None, None
    for k in range(model.num_exits):
        out = stages.stage(k, static=False)(x, tokens, relations)
        want, state = model.run_stage(k, x, state)
        got, want = out[0].asnumpy(), want.asnumpy()
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        tokens, relations = out[1], out[2] if len(out) > 2 else None
    return worst


@pytest.mark.parametrize(("feature_reuse", "relation_reuse"), [(True, True), (True, False), (False, True),
                                                               (False, False)])
def test_every_exit_of_the_tiny_model_equals_the_checkpoint(tmp_path, feature_reuse, relation_reuse):
    ms.set_seed(0)
    model = create_model("dvt_vit", **TINY, feature_reuse=feature_reuse, relation_reuse=relation_reuse)
    manifest = _export_onnx(model, tmp_path / "export", "dvt_vit")
    assert manifest.formats == ["onnx"] and manifest.onnx_opset == OPSET
    assert all(e.file is None and e.onnx_file.endswith(".onnx") for e in manifest.exits)
    stages = OnnxStages(read_manifest(str(tmp_path / "export")))
    for batch in (1, 7, 64):
        assert _worst_difference(model, stages, batch) <= TOLERANCE, batch


def test_every_exit_of_a_tiny_t2t_model_equals_the_checkpoint(tmp_path):
    ms.set_seed(0)
    model = create_model("dvt_t2t_vit", **TINY)
    stages = OnnxStages(read_manifest(str(_export_onnx(model, tmp_path / "export", "dvt_t2t_vit").directory)))
    for batch in (1, 7, 64):
        assert _worst_difference(model, stages, batch) <= TOLERANCE, batch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dvt_t2t_vit_12", "dvt_deit_small"])
def test_every_exit_of_a_published_model_equals_the_checkpoint(tmp_path, name):
    ms.set_seed(0)
    model = create_model(name)  # random weights
    stages = OnnxStages(read_manifest(str(_export_onnx(model, tmp_path / "export", name).directory)))
    for batch in (1, 7, 64):
        assert _worst_difference(model, stages, batch) <= TOLERANCE, (name, batch)


@pytest.fixture(scope="module")
def demo_both(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "demo"
    assert export_main(["--ckpt", DEMO_CKPT, "--output_dir", str(out), "--format", "both"]) == 0
    return out


@pytest.mark.slow
def test_dvt_predict_on_onnx_runtime_decides_like_the_checkpoint(demo_both, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits images need scikit-learn (pip install .[demo])")
    from dvt_ms.demo.digits import build_digits_folder

    build_digits_folder(str(tmp_path / "digits"))
    images = str(tmp_path / "digits" / "val")
    assert predict_main(["--exported", str(demo_both), "--runtime", "onnxruntime", "--images", images,
                         "--output_dir", str(tmp_path / "onnx")]) == 0
    assert predict_main(["--ckpt", DEMO_CKPT, "--images", images, "--output_dir", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()

    def decisions(folder):
        with open(tmp_path / folder / JSONL_NAME, encoding="utf-8") as f:
            return [(r["path"], r["exit"], r["top_k"][0]["class"]) for r in map(json.loads, f)]

    onnx, ckpt = decisions("onnx"), decisions("ckpt")
    assert len(onnx) == 450 and onnx == ckpt  # every image: the same class at the same exit


def test_manifest_of_both_formats_and_the_runtime_choice(demo_both, tmp_path, capsys):
    manifest = read_manifest(str(demo_both))
    assert manifest.formats == ["mindir", "onnx"] and manifest.onnx_opset == OPSET
    files = sorted(os.listdir(demo_both))
    assert files == sorted(["manifest.json", *(e.file for e in manifest.exits), *(e.onnx_file for e in manifest.exits)])
    mindir_only = tmp_path / "mindir"
    assert export_main(["--ckpt", DEMO_CKPT, "--output_dir", str(mindir_only)]) == 0
    image = os.path.join(REPO, "docs", "demo_exit_examples.png")
    capsys.readouterr()
    assert predict_main(["--exported", str(mindir_only), "--runtime", "onnxruntime", "--images", image,
                         "--output_dir", str(tmp_path / "out")]) == 1
    assert "holds mindir only" in capsys.readouterr().err
    assert predict_main(["--exported", str(demo_both), "--runtime", "tensorrt", "--images", image]) == 2


def test_exit_sessions_do_not_spin(demo_both):
    """One session per exit, each with its own thread pool: a pool spinning after its exit ran would hold the cores
    the next exit and the engine's host code need."""
    stages = OnnxStages(read_manifest(str(demo_both)))
    assert len(stages._sessions) == stages.num_exits
    for s in stages._sessions:
        assert s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_tampered_onnx_file_is_refused(demo_both, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(demo_both, damaged)
    target = damaged / read_manifest(str(demo_both)).exits[1].onnx_file
    target.write_bytes(target.read_bytes()[:-16] + bytes(16))
    image = os.path.join(REPO, "docs", "demo_exit_examples.png")
    assert predict_main(["--exported", str(damaged), "--runtime", "onnxruntime", "--images", image,
                         "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "sha256 does not match" in err and target.name in err and "Traceback" not in err


def test_without_the_extra_format_onnx_exits_1_with_the_pip_command(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "export"
    assert export_main(["--ckpt", DEMO_CKPT, "--output_dir", str(out), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert 'pip install -e ".[onnx]"' in err and "onnxruntime" in err and "Traceback" not in err
    assert not out.exists()  # nothing written

