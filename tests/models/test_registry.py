"""One registry: a model registered in a test is built, trained, evaluated and converted by name."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import dvt_ms
from dvt_ms.checkpoint import read_checkpoint
from dvt_ms.models import (
    CascadeSpec,
    create_model,
    model_arguments,
    register_model,
    register_variant,
    registry,
    spec_for,
    t2t_cascade_spec,
    vit_cascade_spec,
)
from tests.helpers import make_image_folder

NAME = "dvt_t2t_registry_test"


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


@pytest.fixture
def new_cascade(isolated_registry):
    @register_model
    def dvt_t2t_registry_test(**overrides) -> CascadeSpec:
        """A two-exit T2T cascade that exists only in this test: 32px images, grids 4 and 8, 4 classes."""
        return t2t_cascade_spec(**{"img_size": 32, "exit_grids": [4, 8], "embed_dim": 32, "depth": 1,
                                   "num_heads": 2, "token_dim": 16, "num_classes": 4, **overrides})

    return dvt_t2t_registry_test


def test_a_registered_spec_function_serves_create_model_and_spec_for(new_cascade):
    assert NAME in dvt_ms.list_models()
    assert spec_for(NAME) == new_cascade()
    assert spec_for(NAME, relation_reuse=False).exits[1].relation_reuse is False
    model = create_model(NAME, num_classes=6)
    assert model.spec == new_cascade(num_classes=6) and model.num_exits == 2
    assert "overrides" in model_arguments(NAME)
    with pytest.raises(ValueError, match="registered twice"):
        register_model(new_cascade)


def test_register_variant_shows_its_defaults_and_checks_them(isolated_registry):
    fn = register_variant("dvt_vit_registry_tiny", vit_cascade_spec, "tiny", embed_dim=192, num_heads=3)
    assert spec_for("dvt_vit_registry_tiny").exits[0].embed_dim == 192
    assert spec_for("dvt_vit_registry_tiny", embed_dim=96).exits[0].embed_dim == 96
    assert "patch_sizes" in model_arguments("dvt_vit_registry_tiny") and fn.__doc__ == "tiny"
    with pytest.raises(ValueError, match="has no argument"):
        spec_for("dvt_vit_registry_tiny", t2t_unfolds=[])
    with pytest.raises(ValueError, match=r"vit_cascade_spec has no argument\(s\) token_dim"):
        register_variant("dvt_vit_registry_bad", vit_cascade_spec, token_dim=8)


def test_a_spec_function_must_return_a_spec(isolated_registry):
    @register_model
    def dvt_registry_not_a_spec(**overrides):
        return {"embed_dim": 8}

    with pytest.raises(TypeError, match="returned dict, not a CascadeSpec"):
        create_model("dvt_registry_not_a_spec")


@pytest.mark.slow
def test_a_model_registered_in_the_test_trains_evaluates_and_converts(new_cascade, tmp_path):
    from dvt_ms.inference.cli import main as eval_main
    from dvt_ms.train.cli import main as train_main

    data = make_image_folder(str(tmp_path / "data"), train_per_class=2, val_per_class=2, classes=4)
    run_dir = str(tmp_path / "run")
    assert train_main(["--model", NAME, "--data_dir", data, "--batch_size", "8", "--epoch_size", "1",
                       "--warmup_epochs", "0", "--num_parallel_workers", "1", "--ckpt_save_dir", run_dir]) == 0
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)["epochs"]
    assert [r["epoch"] for r in results] == [1] and len(results[0]["train_loss"]) == 2  # 8 images: one step
    weights, meta = read_checkpoint(os.path.join(run_dir, "latest.ckpt"))
    assert meta["model"] == NAME and set(weights) == set(create_model(NAME).parameters_dict())
    assert meta["class_names"] == [f"class_{c:02d}" for c in range(4)]  # for dvt-predict and dvt-export

    # dvt-eval finds the model through the name recorded in the checkpoint
    out = str(tmp_path / "eval")
    assert eval_main(["--ckpt", os.path.join(run_dir, "latest.ckpt"), "--data_dir", data, "--eval_mode", "2",
                      "--calib_size", "8", "--batch_size", "4", "--throughput_batches", "0",
                      "--num_parallel_workers", "1", "--output_dir", out]) == 0
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as f:
        evaluated = json.load(f)
    assert evaluated["model"] == NAME and evaluated["num_val_images"] == 8
    assert evaluated["operating_point"]["engine_matches_simulation"]
    assert len(evaluated["anytime_classification"]) == 2

    if importlib.util.find_spec("torch") is None:
        return  # the PyTorch round trip needs torch; training and evaluation above do not
    from dvt_ms.convert.cli import main as convert_main

    exported, back = str(tmp_path / "x.pth"), str(tmp_path / "back.ckpt")
    assert convert_main(["--to-torch", "--src", os.path.join(run_dir, "latest.ckpt"), "--dst", exported]) == 0
    assert convert_main(["--src", exported, "--dst", back, "--model", NAME]) == 0
    restored, _ = read_checkpoint(back)
    for key, value in weights.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_every_argument_of_every_registered_model_is_a_model_flag():
    """The commands' model flags are made from dvt_ms.model_arguments: every argument a registered spec function
    takes is one of them, so every argument can be set from a config file or the command line."""
    import inspect

    from dvt_ms.model_arguments import MODEL_ARGUMENTS, SHARED_ARGUMENTS
    from dvt_ms.options import ModelSettings

    flags = {o.name for o in ModelSettings.options()}
    assert flags == {"model", *(a.name for a in MODEL_ARGUMENTS)}
    for name in dvt_ms.list_models():
        params = inspect.signature(dvt_ms.models.registry.model_entrypoint(name)).parameters.values()
        named = {p.name for p in params if p.kind is not p.VAR_KEYWORD}
        assert named <= flags, (name, named - flags)
    for family in (dvt_ms.models.vit_cascade_spec, dvt_ms.models.t2t_cascade_spec):
        assert set(SHARED_ARGUMENTS) <= set(inspect.signature(family).parameters)
