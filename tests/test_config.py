"""Flat YAML configs: validation, CLI precedence, model creation."""

from __future__ import annotations

import glob
import os

import pytest

import dvt_ms
from dvt_ms.config import MODEL_OPTIONS, ConfigError, create_model_from_config, load_yaml, resolve, spec_from_config
from dvt_ms.inference.options import OPTIONS as EVAL_OPTIONS
from dvt_ms.train.options import OPTIONS as TRAIN_OPTIONS
from tests.helpers import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_shipped_configs_load_and_name_a_model(path):
    cfg = load_config(path)
    spec = spec_from_config(cfg)
    assert cfg["model"] in dvt_ms.list_models()
    assert spec.num_exits >= 2


def test_tiny_config_is_what_tests_rely_on():
    spec = spec_from_config(load_config(os.path.join(REPO, "configs", "dvt_tiny_cpu.yaml")))
    assert spec.img_size == 32 and spec.grids() == [4, 6, 8] and spec.num_classes == 10
    assert {(e.embed_dim, e.depth, e.num_heads) for e in spec.exits} == {(64, 4, 2)}
    assert all(e.feature_reuse and e.relation_reuse for e in spec.exits[1:])


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: dvt_vit\nnum_clases: 10\n")
    expected = r"bad.yaml: unknown config key 'num_clases' \(did you mean 'num_classes'\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_yaml(path, MODEL_OPTIONS)


def test_wrong_type_and_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: dvt_vit\nnum_classes: ten\n")
    with pytest.raises(ConfigError, match="num_classes must be an integer, got 'ten'"):
        load_yaml(path, MODEL_OPTIONS)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="flat mapping"):
        load_yaml(path, MODEL_OPTIONS)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml", MODEL_OPTIONS)


def test_cli_overrides_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nimg_size: 32\nexit_grids: [4, 8]\nnum_classes: 3\n")
    cfg = resolve(MODEL_OPTIONS, ["-c", str(path), "--num_classes", "7", "--exit_grids", "2,4,8",
                                  "--feature_reuse", "False"])
    assert cfg["num_classes"] == 7 and cfg["exit_grids"] == [2, 4, 8] and cfg["feature_reuse"] is False
    assert cfg["img_size"] == 32
    model = create_model_from_config({**cfg, "embed_dim": 32, "depth": 1, "num_heads": 2})
    assert model.num_exits == 3


def test_create_model_errors():
    with pytest.raises(ValueError, match=r"unknown model 'dvt_t2t_vit12'\. Did you mean"):
        dvt_ms.create_model("dvt_t2t_vit12")
    with pytest.raises(ValueError, match="has no argument"):
        dvt_ms.create_model("dvt_deit_small", t2t_unfolds=[[(7, 4, 2)] * 3] * 3)
    with pytest.raises(ValueError, match="exit_grids asks for"):
        dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 6, 8], patch_sizes=[8, 8, 8])
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        dvt_ms.spec_for("dvt_vit", img_size=32, exit_grids=[4, 8], embed_dim=30, num_heads=4)


def test_exponent_numbers_from_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nlr: 1e-3\nmin_lr: 1.0e-5\ncrop_scale: [8e-2, 1]\n")
    cfg = load_config(path)
    assert cfg["lr"] == 1e-3 and cfg["min_lr"] == 1e-5 and cfg["crop_scale"] == [0.08, 1.0]
    assert resolve(TRAIN_OPTIONS, ["--lr", "2e-4"])["lr"] == 2e-4


def test_each_command_accepts_the_keys_of_the_commands_sharing_its_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: dvt_vit\nlr: 1e-3\ncalib_size: 100\n")
    cfg = resolve((*MODEL_OPTIONS, *EVAL_OPTIONS), ["-c", str(path)], shared_with=TRAIN_OPTIONS)
    assert cfg["lr"] == 1e-3 and cfg["calib_size"] == 100
    with pytest.raises(SystemExit):  # a training key is not a flag of the evaluation command
        resolve((*MODEL_OPTIONS, *EVAL_OPTIONS), ["--lr", "1e-3"], shared_with=TRAIN_OPTIONS)
    with pytest.raises(ConfigError, match="unknown config key 'lr'"):  # nor a key when nobody shares it
        resolve((*MODEL_OPTIONS, *EVAL_OPTIONS), ["-c", str(path)])
    path.write_text("model: dvt_vit\nlr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number"):  # shared keys are still validated
        resolve((*MODEL_OPTIONS, *EVAL_OPTIONS), ["-c", str(path)], shared_with=TRAIN_OPTIONS)
