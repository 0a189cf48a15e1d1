"""``dvt-export`` (``python -m dvt_ms.export``): a checkpoint -> one MindIR graph per exit + ``manifest.json``.

    dvt-export --ckpt demo/dvt_digits_demo.ckpt -c configs/dvt_digits_demo.yaml --output_dir outputs/export
    dvt-export --ckpt X.ckpt --output_dir DIR --budget 1.5 --class_names classes.txt

Each exit's graph takes the images and, where the exit reuses them, the previous exit's features and
relations, with a dynamic batch dimension; ``dvt-predict --exported DIR`` runs them with real early
exit. The folder is written atomically: it appears complete or not at all (an earlier export in
its place is replaced only when the new one is complete).
Exit status: 0 on success, 1 when the export cannot run (the message says why), 2 for bad usage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from ..checkpoint import CheckpointError, current_umask
from ..command import run_command
from ..config import MODEL_OPTIONS, ConfigError, Option, resolve
from ..data import DataError
from ..data.transforms import EvalTransform
from ..flops import cumulative_gflops
from ..inference.operating_point import OperatingPoint, ThresholdError
from ..inference.options import OPTIONS as EVAL_OPTIONS
from ..train.options import OPTIONS as TRAIN_OPTIONS
from .checkpoint_model import OPERATING_OPTIONS, ServeError, load_checkpoint_model
from .graphs import ExitGraph
from .manifest import MANIFEST_NAME, ExportedExit, Manifest, sha256_of, write_manifest

PROG = "dvt-export"

OPTIONS: tuple[Option, ...] = (
    Option("ckpt", "str", None, "MindSpore checkpoint (.ckpt / .safetensors) to export"),
    Option("output_dir", "str", "outputs/export", "folder for the per-exit MindIR files and manifest.json"),
    *OPERATING_OPTIONS,
    Option("device_target", "str", "CPU", "MindSpore device used to trace the graphs", ("Ascend", "GPU", "CPU")),
)


@contextlib.contextmanager
def _atomic_directory(path: str) -> Iterator[str]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` (a previous export) whole."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ServeError(f"--output_dir {path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        raise ServeError(f"--output_dir {path} is a non-empty folder that holds no earlier export: choose "
                          "another folder")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700: give the folder the usual mode
    retired = staging + ".old"
    try:
        yield staging
        if os.path.exists(path):
            os.rename(path, retired)
        os.rename(staging, path)
    except BaseException:
        if os.path.exists(retired) and not os.path.exists(path):
            os.rename(retired, path)  # the earlier export comes back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def export_graph(model: Any, k: int) -> tuple[Any, list[Any]]:
    """Exit ``k`` of ``model`` as the graph dvt-export writes: ``(graph, placeholders)``, the graph's inputs
    declared with a dynamic batch (so it runs MindSpore's portable stock ops, not the CPU kernels)."""
    import mindspore as ms
    from mindspore import Tensor

    features, relations = model.needs_state(k)
    graph = ExitGraph(model.exit(k), features, relations)
    placeholders = [Tensor(shape=[None, *shape[1:]], dtype=ms.float32) for _, shape in model.stage_inputs(k)]
    graph.set_inputs(*placeholders)
    return graph, placeholders


def export_model(model, output_dir: str, *, model_name: str, model_args: dict[str, Any], point: OperatingPoint,
                 transform: EvalTransform, class_names: Sequence[str] | None = None,
                 metadata: dict | None = None) -> Manifest:
    """Export every exit of ``model`` (a :class:`~dvt_ms.models.DVTCascade` with its weights) to
    ``output_dir`` with a manifest; returns the manifest. ``metadata`` (the checkpoint's) contributes the
    calibrated table and curve the thresholds came from."""
    import mindspore as ms

    from .. import __version__

    model.set_train(False)
    spec, cumulative = model.spec, cumulative_gflops(model.spec)
    exits = []
    with _atomic_directory(output_dir) as staging:
        for k, name in enumerate(spec.exit_names):
            inputs = model.stage_inputs(k)
            features, relations = model.needs_state(k)
            graph, placeholders = export_graph(model, k)
            stem = f"exit_{k + 1}_{name}"
            ms.export(graph, *placeholders, file_name=os.path.join(staging, stem), file_format="MINDIR")
            file = f"{stem}.mindir"
            os.chmod(os.path.join(staging, file), 0o666 & ~current_umask())  # MindSpore writes 0400
            outputs = ["logits", "tokens"] + (["relations"] if model.exit(k).emit_relations else [])
            exits.append(ExportedExit(name, spec.exits[k].grid(spec.img_size), file,
                                      sha256_of(os.path.join(staging, file)),
                                      [{"name": n, "shape": s} for n, s in inputs], outputs, features, relations,
                                      cumulative[k]))
        metadata = metadata or {}
        manifest = Manifest(
            model=model_name, model_args=dict(model_args), num_classes=spec.num_classes, img_size=spec.img_size,
            in_chans=spec.in_chans, exits=exits, thresholds=[float(t) for t in point.thresholds],
            thresholds_chosen_by=point.chosen_by, preprocessing=transform.describe(),
            mindspore_version=ms.__version__, dvt_ms_version=__version__,
            class_names=list(class_names) if class_names is not None else None,
            dynamic_threshold=metadata.get("dynamic_threshold"),
            budgeted_batch_classification=metadata.get("budgeted_batch_classification"))
        write_manifest(manifest, staging)
    manifest.directory = os.path.abspath(output_dir)
    return manifest


def run(cfg: dict[str, Any]) -> Manifest:
    """Export the checkpoint a resolved ``dvt-export`` config names."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(cfg["device_target"])
    loaded = load_checkpoint_model(cfg)
    return export_model(loaded.model, cfg["output_dir"], model_name=loaded.name, model_args=loaded.model_args,
                        point=loaded.point, transform=loaded.transform, class_names=loaded.class_names,
                        metadata=loaded.metadata)


def _export(cfg: dict[str, Any]) -> str:
    manifest = run(cfg)
    return (f"{PROG}: {manifest.model}, {manifest.num_exits} exits -> {manifest.directory} (thresholds: "
            f"{manifest.thresholds_chosen_by}; cumulative GFLOPs "
            f"{', '.join(f'{g:.4f}' for g in manifest.cumulative_gflops)})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-export``; returns the exit status."""
    def parse() -> dict[str, Any]:
        return resolve((*MODEL_OPTIONS, *OPTIONS), argv, __doc__.split("\n\n")[0], PROG,
                       shared_with=(*TRAIN_OPTIONS, *EVAL_OPTIONS))

    return run_command(PROG, parse, _export, (ServeError, ThresholdError, CheckpointError, DataError, ConfigError))
