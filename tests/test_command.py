"""One exit-status convention for every command: 0 success, 1 the run could not go on, 2 bad usage."""

from __future__ import annotations

import json
import os

import mindspore as ms
import pytest

import dvt_ms
import dvt_ms.options as options
from dvt_ms.checkpoint import save_checkpoint
from dvt_ms.command import run_command
from dvt_ms.config import ConfigError, Option, resolve
from dvt_ms.convert.cli import main as convert_main
from dvt_ms.inference.cli import main as eval_main
from dvt_ms.serve.export import main as export_main
from dvt_ms.serve.predict import main as predict_main
from dvt_ms.train.cli import main as train_main
from tests.helpers import HAVE_TORCH, make_image_folder

TINY = {"img_size": 32, "exit_grids": [4, 8], "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 3}
MAINS = {"dvt-train": train_main, "dvt-eval": eval_main, "dvt-convert": convert_main, "dvt-export": export_main,
         "dvt-predict": predict_main}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("command")
    data = make_image_folder(str(root / "data"), train_per_class=2, val_per_class=2, classes=3)
    ms.set_seed(0)
    model = dvt_ms.create_model("dvt_vit", **TINY)
    ckpt = str(root / "tiny.ckpt")
    save_checkpoint(model, ckpt, metadata={"model": "dvt_vit", "model_args": TINY,
                                           "class_names": ["a", "b", "c"]})
    corrupt = str(root / "corrupt.ckpt")
    with open(corrupt, "wb") as f:
        f.write(b"\x00 not a checkpoint " * 64)
    (root / "no_splits").mkdir()
    return {"root": root, "data": data, "ckpt": ckpt, "corrupt": corrupt, "no_splits": str(root / "no_splits")}


def _runs(tiny, tmp_path) -> dict[str, dict[str, list[str]]]:
    """For each command: arguments that succeed, that fail at run time (an input that exists but cannot be used),
    that are bad usage."""
    ckpt, data, missing = tiny["ckpt"], tiny["data"], tiny["corrupt"]
    return {
        "dvt-train": {"ok": ["--model", "dvt_vit", *_flags(TINY), "--data_dir", data, "--batch_size", "6",
                             "--epoch_size", "1", "--warmup_epochs", "0", "--num_parallel_workers", "1",
                             "--ckpt_save_dir", str(tmp_path / "run")],
                      "fail": ["--model", "dvt_vit", *_flags(TINY), "--data_dir", tiny["no_splits"],
                               "--ckpt_save_dir", str(tmp_path / "run2")],
                      "usage": ["--model", "dvt_vit", "--batch_size", "-1"]},
        "dvt-eval": {"ok": ["--ckpt", ckpt, "--data_dir", data, "--thresholds", "0.5", "--throughput_batches", "0",
                            "--output_dir", str(tmp_path / "eval")],
                     "fail": ["--ckpt", missing, "--data_dir", data],
                     "usage": ["--ckpt", ckpt, "--eval_mode", "three"]},
        "dvt-convert": {"ok": ["--to-torch", "--src", ckpt, "--dst", str(tmp_path / "t.pth")] if HAVE_TORCH
                        else ["--src", ckpt, "--dst", str(tmp_path / "copy.safetensors"), "--model", "dvt_vit",
                              *_flags(TINY)],
                        "fail": ["--src", missing, "--dst", str(tmp_path / "x.ckpt")],
                        "usage": ["--src", ckpt]},
        "dvt-export": {"ok": ["--ckpt", ckpt, "--thresholds", "0.5", "--output_dir", str(tmp_path / "export")],
                       "fail": ["--ckpt", missing, "--output_dir", str(tmp_path / "export2")],
                       "usage": ["--ckpt", ckpt, "--no_such_flag", "1"]},
        "dvt-predict": {"ok": ["--ckpt", ckpt, "--images", os.path.join(data, "val"), "--thresholds", "0.5",
                               "--output_dir", str(tmp_path / "predict")],
                        "fail": ["--ckpt", missing, "--images", data],
                        "usage": ["--ckpt", ckpt, "--images", data, "--top_k", "many"]},
    }


def _flags(args: dict) -> list[str]:
    return [item for k, v in args.items() for item in (f"--{k}", ",".join(map(str, v)) if isinstance(v, list)
                                                           else str(v))]


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(MAINS))
def test_every_command_exits_0_1_2(tiny, tmp_path, capsys, command):
    runs = _runs(tiny, tmp_path)[command]
    if command == "dvt-convert" and not HAVE_TORCH:
        runs["ok"] = []  # reading / writing .pth needs torch; 0 is covered by tests/convert with torch
    if runs["ok"]:
        assert MAINS[command](runs["ok"]) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    assert MAINS[command](runs["fail"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"{command}: error: ") and "Traceback" not in err
    assert MAINS[command](runs["usage"]) == 2
    gone = str(tmp_path / "gone")  # a named input that is not there: the command line is wrong, 2 everywhere
    missing = [a if a not in (tiny["corrupt"], tiny["no_splits"]) else gone for a in runs["fail"]]
    capsys.readouterr()
    assert MAINS[command](missing) == 2
    assert f" {gone}: no such " in capsys.readouterr().err


def test_internal_errors_keep_their_traceback_and_exit_1(capsys, caplog):
    def broken(cfg):
        raise KeyError("a bug")

    def parse(argv):
        return lambda: resolve((Option("n", "int", 1),), argv, prog="dvt-x")

    assert run_command("dvt-x", parse([]), broken, (ConfigError,)) == 1
    assert "Traceback" in caplog.text and "KeyError: 'a bug'" in caplog.text  # the log (stderr without one)
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary == "dvt-x: internal error: KeyError: 'a bug' (the traceback is above or in the log)"
    assert run_command("dvt-x", parse(["--n", "x"]), broken, ()) == 2


def test_eval_fails_when_the_engine_disagrees_with_the_simulation(tiny, tmp_path, monkeypatch, capsys):
    import dvt_ms.inference.evaluate as evaluate

    real = evaluate.simulate_exits
    monkeypatch.setattr(evaluate, "simulate_exits", lambda conf, thr: (real(conf, thr) + 1) % conf.shape[0])
    out = tmp_path / "eval"
    assert eval_main(["--ckpt", tiny["ckpt"], "--data_dir", tiny["data"], "--thresholds", "0.5",
                      "--throughput_batches", "0", "--output_dir", str(out)]) == 1
    assert "disagree on 6 of 6 images" in capsys.readouterr().err
    with open(out / "eval_results.json", encoding="utf-8") as f:  # written for inspection
        assert json.load(f)["operating_point"]["mismatches"] == 6


def test_training_stops_after_too_many_nan_steps(tiny, tmp_path, capsys):
    # lr 1e30: the first update throws the weights far out, every later loss is NaN/inf and skipped
    args = ["--model", "dvt_vit", *_flags(TINY), "--data_dir", tiny["data"], "--batch_size", "2", "--epoch_size",
            "3", "--warmup_epochs", "0", "--num_parallel_workers", "1", "--ckpt_save_dir", str(tmp_path / "run"),
            "--log_interval", "1", "--max_bad_steps", "2", "--lr", "1e30", "--val_interval", "0"]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert "NaN/inf for 3 steps in a row (more than --max_bad_steps 2)" in err and "Traceback" not in err


def test_bad_training_settings_are_clean_errors(tiny, tmp_path, capsys):
    args = ["--model", "dvt_vit", *_flags(TINY), "--data_dir", tiny["data"], "--batch_size", "2", "--epoch_size", "1",
            "--warmup_epochs", "0", "--num_parallel_workers", "1", "--ckpt_save_dir", str(tmp_path / "run")]
    assert train_main([*args, "--loss_scale", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "dvt-train: error: --loss_scale: loss_scale must be >= 1, got 0.5" in err and "internal error" not in err
    assert train_main([*args, "--auto_augment", "rand-nonsense"]) == 2  # found by the pipeline's builder
    assert "internal error" not in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("batch_size", "0"), ("num_parallel_workers", "-1"),
                                             ("thresholds", "high"), ("device_target", "TPU"),
                                             ("no_such_flag", "1")])
def test_the_same_bad_value_gets_status_2_in_every_command(tiny, tmp_path, capsys, flag, value):
    bases = {"dvt-train": ["--model", "dvt_vit", "--data_dir", tiny["data"]],
             "dvt-eval": ["--ckpt", tiny["ckpt"], "--data_dir", tiny["data"]],
             "dvt-export": ["--ckpt", tiny["ckpt"]],
             "dvt-predict": ["--ckpt", tiny["ckpt"], "--images", tiny["data"]],
             "dvt-convert": ["--src", tiny["ckpt"], "--dst", str(tmp_path / "x.pth")]}
    settings = {"dvt-train": options.TrainSettings, "dvt-eval": options.EvalSettings,
                "dvt-export": options.ExportSettings, "dvt-predict": options.PredictSettings,
                "dvt-convert": options.ConvertSettings}
    for command, base in bases.items():
        if flag != "no_such_flag" and flag not in {o.name for o in settings[command].options()}:
            continue  # not a flag of this command: an unknown flag, covered by the last case
        assert MAINS[command]([*base, f"--{flag}", value]) == 2, command
        assert "Traceback" not in capsys.readouterr().err


def test_python_m_dvt_ms_runs_every_command_by_name(capsys):
    from importlib import import_module

    from dvt_ms.command import COMMANDS, dispatch

    assert dispatch([]) == 2 and "commands:" in capsys.readouterr().err
    assert dispatch(["evaluate"]) == 2 and "unknown command 'evaluate'" in capsys.readouterr().err
    for name, (module, _, _) in COMMANDS.items():
        assert callable(import_module(module).main), name
        assert dispatch([name, "--help"]) == 0, name
        assert "usage:" in capsys.readouterr().out


# ---- one status rule, and what a new user's mistakes get -------------------------------------------------

def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{command}: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_wrong_counts_and_out_of_range_values_are_bad_usage(tiny, tmp_path, capsys):
    eval_args = ["--ckpt", tiny["ckpt"], "--data_dir", tiny["data"], "--throughput_batches", "0",
                 "--output_dir", str(tmp_path / "e")]
    assert eval_main([*eval_args, "--thresholds", "0.5,0.6,0.7"]) == 2  # 3 values for a 2-exit model
    assert "got 3 value(s) for a model with 2 exits" in _one_error_line(capsys, "dvt-eval")
    assert eval_main([*eval_args, "--budget", "-1"]) == 2
    assert "--budget must be a positive number of GFLOPs" in _one_error_line(capsys, "dvt-eval")
    assert eval_main([*eval_args, "--eval_mode", "2", "--budget", "1e-9"]) == 2  # below every calibrated point
    assert "below every point of the curve" in _one_error_line(capsys, "dvt-eval")
    assert predict_main(["--ckpt", tiny["ckpt"], "--images", tiny["data"], "--thresholds", "1.5"]) == 2
    line = _one_error_line(capsys, "dvt-predict")
    assert "1.5 for exit 1 is not a probability in [0, 1]" in line and "exit 1 would never be taken" in line


def test_missing_required_flags_and_files_are_bad_usage_everywhere(tiny, tmp_path, capsys):
    assert train_main(["--model", "dvt_vit"]) == 2
    assert "--data_dir is required" in _one_error_line(capsys, "dvt-train")
    assert eval_main(["--ckpt", tiny["ckpt"], "--eval_mode", "1"]) == 2
    assert "--eval_mode 1 needs --data_dir" in _one_error_line(capsys, "dvt-eval")
    missing = str(tmp_path / "no.yaml")
    assert eval_main(["-c", missing, "--ckpt", tiny["ckpt"], "--eval_mode", "0"]) == 2
    assert f"config file not found: {missing}" in _one_error_line(capsys, "dvt-eval")
    assert predict_main(["--ckpt", tiny["ckpt"], "--images", str(tmp_path / "photo.jpg")]) == 2
    assert f"--images {tmp_path / 'photo.jpg'}: no such file or directory" in _one_error_line(capsys, "dvt-predict")


def test_flags_are_never_abbreviated(tiny, capsys):
    assert eval_main(["--ckpt", tiny["ckpt"], "--eval_mod", "0"]) == 2
    assert "unrecognized arguments: --eval_mod" in capsys.readouterr().err


def test_a_negative_learning_rate_says_so(tiny, capsys):
    assert train_main(["--model", "dvt_vit", "--data_dir", tiny["data"], "--lr", "-1"]) == 2
    assert _one_error_line(capsys, "dvt-train") == "dvt-train: error: --lr must be positive, got -1"


def test_a_checkpoint_used_with_another_model_s_settings_says_it_records_its_own(tiny, tmp_path, capsys):
    assert eval_main(["--ckpt", tiny["ckpt"], "--model", "dvt_vit", "--embed_dim", "48", "--eval_mode", "1",
                      "--data_dir", tiny["data"], "--thresholds", "0.5", "--output_dir", str(tmp_path / "e")]) == 1
    line = _one_error_line(capsys, "dvt-eval")
    assert "does not fit" in line and "The checkpoint records its own model (dvt_vit)" in line
    assert "embed_dim 48 vs 32" in line and "drop -c / --config and the model flags" in line


def test_a_text_file_that_is_not_a_list_of_images_is_named(tiny, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("# my photos\nbuy milk\n")
    assert predict_main(["--ckpt", tiny["ckpt"], "--images", str(notes)]) == 1
    assert f"{notes}:2: 'buy milk' does not exist (a list file holds one image path per line" in \
        _one_error_line(capsys, "dvt-predict")
    images = sorted(os.listdir(os.path.join(tiny["data"], "val", "class_00")))
    good = tmp_path / "list.txt"
    good.write_text(f"# two images\n\n{os.path.join(tiny['data'], 'val', 'class_00', images[0])}\n{notes}\n")
    assert predict_main(["--ckpt", tiny["ckpt"], "--images", str(good)]) == 1
    assert f"{good}:4: '{notes}' is not an image file" in _one_error_line(capsys, "dvt-predict")


@pytest.mark.slow
def test_the_class_count_comes_from_the_folder_or_must_match_it(tiny, tmp_path, capsys):
    base = ["--model", "dvt_vit", *_flags({k: v for k, v in TINY.items() if k != "num_classes"}), "--data_dir",
            tiny["data"], "--batch_size", "6", "--epoch_size", "1", "--warmup_epochs", "0", "--val_interval", "0",
            "--num_parallel_workers", "1"]
    assert train_main([*base, "--num_classes", "10", "--ckpt_save_dir", str(tmp_path / "ten")]) == 2
    line = _one_error_line(capsys, "dvt-train")
    assert "--num_classes 10 but the training data" in line and "has 3 classes: pass --num_classes 3" in line
    assert train_main([*base, "--ckpt_save_dir", str(tmp_path / "three")]) == 0
    assert "num_classes 3: the class folders of" in capsys.readouterr().out
    meta = dvt_ms.checkpoint.read_metadata(str(tmp_path / "three" / "latest.ckpt"))
    assert meta["num_classes"] == 3 and meta["class_names"] == ["class_00", "class_01", "class_02"]
