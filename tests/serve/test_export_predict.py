"""Serving: per-exit MindIR export, the exported graphs vs the checkpoint, dvt-predict and its errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat

import mindspore as ms
import numpy as np
import pytest

from dvt_ms.checkpoint import read_checkpoint, save_checkpoint
from dvt_ms.data import build_eval_dataset
from dvt_ms.inference.cli import main as eval_main
from dvt_ms.inference.engine import EarlyExitEngine
from dvt_ms.models import create_model
from dvt_ms.serve import ExportedStages, ManifestError, read_manifest
from dvt_ms.serve.export import main as export_main
from dvt_ms.serve.manifest import MANIFEST_NAME
from dvt_ms.serve.predict import CSV_NAME, JSONL_NAME, SUMMARY_NAME
from dvt_ms.serve.predict import main as predict_main
from tests.helpers import REPO, flat_digits, make_image_folder, requires_sklearn

DEMO_CKPT = os.path.join(REPO, "demo", "dvt_digits_demo.ckpt")
DEMO_CONFIG = os.path.join(REPO, "configs", "dvt_digits_demo.yaml")
TINY = {"img_size": 32, "exit_grids": [4, 6, 8], "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 5}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A folder holding ``digits/`` (the demo's class folders) and ``flat/`` (its validation images, unlabelled)."""
    return flat_digits(tmp_path_factory.mktemp("digits")).parent


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "demo"
    assert export_main(["--ckpt", DEMO_CKPT, "-c", DEMO_CONFIG, "--output_dir", str(out)]) == 0
    return out


def _same_decisions(a, b) -> None:
    np.testing.assert_array_equal(a.exits, b.exits)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_allclose(a.confidences, b.confidences, atol=1e-5, rtol=0)


def test_manifest_describes_the_export(demo_export):
    manifest = read_manifest(str(demo_export))
    _, metadata = read_checkpoint(DEMO_CKPT)
    assert manifest.model == "dvt_vit" and manifest.num_exits == 3 and [e.grid for e in manifest.exits] == [4, 6, 8]
    assert manifest.class_names == [str(c) for c in range(10)]
    assert manifest.cumulative_gflops == pytest.approx(metadata["flops"])
    assert manifest.thresholds_chosen_by == "most accurate curve point"
    assert [i["name"] for i in manifest.exits[0].inputs] == ["images"]
    assert [i["name"] for i in manifest.exits[1].inputs] == ["images", "features", "relations"]
    assert manifest.exits[1].inputs[2]["shape"] == [-1, 6, 17, 17]  # 3 blocks x 2 heads, 4x4 tokens + class
    assert manifest.preprocessing["center_crop"] == 32 and manifest.preprocessing["resize_short_side"] == 36
    assert manifest.mindspore_version == ms.__version__
    assert sorted(os.listdir(demo_export)) == sorted([MANIFEST_NAME, *(e.file for e in manifest.exits)])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(demo_export).st_mode) == 0o777 & ~umask  # a folder others may serve from
    assert stat.S_IMODE(os.stat(demo_export / manifest.exits[0].file).st_mode) == 0o666 & ~umask


@requires_sklearn
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_exported_graphs_decide_as_the_checkpoint(digits, demo_export, batch):
    manifest = read_manifest(str(demo_export))
    model = create_model(manifest.model, **manifest.model_args, checkpoint_path=DEMO_CKPT)
    from_checkpoint = EarlyExitEngine(model, manifest.thresholds)
    exported = EarlyExitEngine(ExportedStages(manifest), manifest.thresholds)
    val = build_eval_dataset("imagefolder", str(digits / "digits"), "val", 32)
    images = np.stack([val[i][0] for i in range(len(val))])
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        _same_decisions(exported(chunk), from_checkpoint(chunk))


@pytest.mark.parametrize("feature_reuse,relation_reuse", [(True, True), (False, False), (True, False),
                                                          (False, True)])
@pytest.mark.exhaustive
def test_round_trip_of_the_tiny_model(tmp_path, feature_reuse, relation_reuse):
    ms.set_seed(0)
    model = create_model("dvt_vit", **TINY, feature_reuse=feature_reuse, relation_reuse=relation_reuse)
    ckpt = str(tmp_path / "tiny.ckpt")
    save_checkpoint(model, ckpt, metadata={"model": "dvt_vit", "model_args": {
        **TINY, "feature_reuse": feature_reuse, "relation_reuse": relation_reuse}})
    out = tmp_path / "export"
    assert export_main(["--ckpt", ckpt, "--output_dir", str(out), "--thresholds", "0.3,0.3"]) == 0
    manifest = read_manifest(str(out))
    assert [e.feature_reuse for e in manifest.exits] == [False, feature_reuse, feature_reuse]
    assert [len(e.inputs) for e in manifest.exits][1] == 1 + feature_reuse + relation_reuse
    exported = EarlyExitEngine(ExportedStages(manifest), manifest.thresholds)
    reference = EarlyExitEngine(model, manifest.thresholds)
    x = np.random.default_rng(0).normal(size=(9, 3, 32, 32)).astype(np.float32)
    for got, want in zip(exported.all_exit_logits(x), reference.all_exit_logits(x), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    _same_decisions(exported(x), reference(x))


@requires_sklearn
@pytest.mark.slow
def test_predict_on_a_flat_folder_agrees_with_dvt_eval(digits, demo_export, tmp_path):
    thresholds = "0.8,0.7"
    out = tmp_path / "predict"
    assert predict_main(["--exported", str(demo_export), "--images", str(digits / "flat"), "--thresholds",
                         thresholds, "--top_k", "3", "--output_dir", str(out)]) == 0
    evaluated = tmp_path / "eval"
    assert eval_main(["-c", DEMO_CONFIG, "--ckpt", DEMO_CKPT, "--data_dir", str(digits / "digits"), "--eval_mode",
                      "1", "--thresholds", thresholds, "--throughput_batches", "0", "--output_dir",
                      str(evaluated)]) == 0
    with open(out / SUMMARY_NAME, encoding="utf-8") as f:
        summary = json.load(f)
    with open(evaluated / "eval_results.json", encoding="utf-8") as f:
        results = json.load(f)
    assert summary["images"] == summary["predicted"] == 450 and summary["failed"] == 0
    assert summary["exit_shares"] == pytest.approx(results["exit_shares"], abs=1e-12)
    assert summary["mean_gflops"] == pytest.approx(results["operating_point"]["expected_gflops"], rel=1e-9)
    assert summary["img_per_s"] > 0 and summary["gflops_vs_last_exit"] < 1
    with open(out / JSONL_NAME, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 450 and set(records[0]) == {"path", "exit", "gflops", "top_k", "error"}
    first = records[0]["top_k"]
    assert len(first) == 3 and set(first[0]) == {"class", "name", "probability"}
    assert first[0]["probability"] >= first[1]["probability"] >= first[2]["probability"]
    assert first[0]["name"] == str(first[0]["class"])  # the digits' class names travel with the model
    correct = [r["top_k"][0]["name"] == os.path.basename(r["path"]).split("_")[0] for r in records]
    top1 = 100.0 * np.mean(correct)
    assert top1 == pytest.approx(results["operating_point"]["accuracy"], abs=1e-9)
    with open(out / CSV_NAME, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 450 and rows[0]["top3_probability"] and rows[0]["error"] == ""
    assert os.path.isfile(out / "exit_examples.png") and os.path.isfile(evaluated / "exit_examples.png")


def test_unreadable_images_are_reported_and_strict_stops(demo_export, tmp_path):
    folder = tmp_path / "images"
    make_image_folder(str(tmp_path / "made"), train_per_class=0, val_per_class=2, classes=2)
    os.makedirs(folder / "nested")
    for i, path in enumerate(sorted((tmp_path / "made" / "val").rglob("*.png"))):
        shutil.copy(path, folder / "nested" / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("images/broken.jpg\nimages/nested/ok0.png\n\n# a comment\n")
    out = tmp_path / "out"
    assert predict_main(["--exported", str(demo_export), "--images", str(folder), str(listing), "--output_dir",
                         str(out), "--examples_per_exit", "2"]) == 0
    with open(out / JSONL_NAME, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 7  # 5 in the folder (recursive) + 2 from the list
    broken = [r for r in records if r["path"].endswith("broken.jpg")]
    assert len(broken) == 2 and all("cannot read image" in r["error"] and r["exit"] is None for r in broken)
    assert all(r["error"] is None and r["exit"] in (1, 2, 3) for r in records if r not in broken)
    with open(out / SUMMARY_NAME, encoding="utf-8") as f:
        assert json.load(f)["failed"] == 2
    strict_out = tmp_path / "strict"
    assert predict_main(["--exported", str(demo_export), "--images", str(folder), "--strict", "--output_dir",
                         str(strict_out)]) == 1
    assert not strict_out.exists()


def _copy_export(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_exports_and_flags_fail_clearly(demo_export, tmp_path, capsys):
    images = tmp_path / "one"
    make_image_folder(str(tmp_path / "made"), train_per_class=0, val_per_class=1, classes=1)
    shutil.copytree(tmp_path / "made" / "val", images)
    manifest = read_manifest(str(demo_export))

    missing = _copy_export(demo_export, tmp_path / "missing")
    os.remove(missing / manifest.exits[1].file)
    damaged = _copy_export(demo_export, tmp_path / "damaged")
    with open(damaged / manifest.exits[2].file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="major versions must match"):
        read_manifest(str(demo_export), mindspore_version="9.0.0")
    (tmp_path / "empty").mkdir()
    rewired = _copy_export(demo_export, tmp_path / "rewired")
    data = json.loads((rewired / MANIFEST_NAME).read_text())
    data["exits"][1]["relation_reuse"] = False  # the graph still takes relations
    (rewired / MANIFEST_NAME).write_text(json.dumps(data))
    cases = {
        "wiring": (["--exported", str(rewired)], "do not match the reuse wiring"),
        "missing file": (["--exported", str(missing)], f"needs {manifest.exits[1].file}, which is missing"),
        "sha mismatch": (["--exported", str(damaged)], "sha256 does not match"),
        "not an export": (["--exported", str(tmp_path / "empty")], "has no manifest.json"),
        "thresholds length": (["--exported", str(demo_export), "--thresholds", "0.5,0.5,0.5,0.5"],
                              "got 4 value(s) for a model with 3 exits"),
        "budget too low": (["--exported", str(demo_export), "--budget", "0.0001"], "below every point"),
        "empty folder": (["--exported", str(demo_export), "--images", str(tmp_path / "empty")], "no image files"),
    }
    bad_usage = {"thresholds length", "budget too low"}  # values out of range for this model: status 2
    for case, (args, words) in cases.items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        argv = args + (["--images", str(images)] if "--images" not in args else []) + ["--output_dir", str(out)]
        assert predict_main(argv) == (2 if case in bad_usage else 1), case
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (case, err)
        assert not out.exists(), case  # nothing half-written
    assert predict_main(["--exported", str(demo_export), "--images", str(images), "--top_k", "x"]) == 2
    # settings that contradict each other are bad usage, found before anything is read
    assert predict_main(["--exported", str(demo_export), "--ckpt", DEMO_CKPT, "--images", str(images)]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    ms.set_seed(0)
    model = create_model("dvt_vit", **TINY)
    ckpt = str(tmp_path / "tiny.ckpt")
    save_checkpoint(model, ckpt, metadata={"model": "dvt_vit", "model_args": TINY})
    out = tmp_path / "export"
    assert export_main(["--ckpt", ckpt, "--output_dir", str(out)]) == 1  # no calibrated thresholds stored
    assert "stores no calibrated thresholds" in capsys.readouterr().err and not out.exists()

    calls = []

    def failing_export(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_export(*args, **kwargs)

    real_export = ms.export
    monkeypatch.setattr(ms, "export", failing_export)
    assert export_main(["--ckpt", ckpt, "--output_dir", str(out), "--thresholds", "0.5,0.5"]) == 1
    assert "internal error: RuntimeError: disk full" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["tiny.ckpt"]  # no export folder, no staging folder


def test_class_names_override(demo_export, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"digit {c}" for c in range(10)) + "\n")
    images = tmp_path / "img"
    make_image_folder(str(tmp_path / "made"), train_per_class=0, val_per_class=1, classes=1)
    shutil.copytree(tmp_path / "made" / "val", images)
    out = tmp_path / "out"
    assert predict_main(["--exported", str(demo_export), "--images", str(images), "--class_names", str(names),
                         "--output_dir", str(out)]) == 0
    with open(out / JSONL_NAME, encoding="utf-8") as f:
        assert json.loads(f.readline())["top_k"][0]["name"].startswith("digit ")
    assert predict_main(["--exported", str(demo_export), "--images", str(images), "--top_k", "50",
                         "--output_dir", str(tmp_path / "all")]) == 0
    with open(tmp_path / "all" / JSONL_NAME, encoding="utf-8") as f:
        top = json.loads(f.readline())["top_k"]
    assert len(top) == 10 and sorted(t["class"] for t in top) == list(range(10))  # never more than 10 classes
    names.write_text("a\nb\n")
    assert predict_main(["--exported", str(demo_export), "--images", str(images), "--class_names", str(names),
                         "--output_dir", str(tmp_path / "out2")]) == 1


def test_exporting_a_model_leaves_its_fused_kernels_in_place(tmp_path):
    from dvt_ms import kernels

    ms.set_seed(0)
    model = create_model("dvt_vit", **TINY)
    model.set_train(False)
    fused = [name for name, cell in model.cells_and_names() if getattr(cell, "fused", None) is not None]
    if not fused:
        pytest.skip("the fused CPU kernels are not available here")
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    before = [o.asnumpy() for o in model(x)]
    from dvt_ms.data.transforms import EvalTransform
    from dvt_ms.inference.operating_point import OperatingPoint
    from dvt_ms.serve.export import export_model

    point = OperatingPoint(np.zeros(model.num_exits), "test")
    export_model(model, str(tmp_path / "export"), model_name="dvt_vit", model_args={}, point=point,
                 transform=EvalTransform(32, 1.0))
    assert [n for n, c in model.cells_and_names() if getattr(c, "fused", None) is not None] == fused
    for got, want in zip((o.asnumpy() for o in model(x)), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with kernels.kernels_restored(model):  # the block may drop them; they come back after it
        kernels.drop_kernels_if_dynamic(model, [ms.Tensor(shape=[None, 3, 32, 32], dtype=ms.float32)])
        assert all(getattr(c, "fused", None) is None for _, c in model.cells_and_names())
    assert [n for n, c in model.cells_and_names() if getattr(c, "fused", None) is not None] == fused
