"""``dvt-convert``: official PyTorch DVT checkpoints -> MindSpore checkpoints, and back.

    dvt-convert --src DVT_T2t_vit_12.pth.tar --dst dvt_t2t_vit_12.ckpt [--model dvt_t2t_vit_12]
    dvt-convert --src X.pth.tar --dst X.safetensors --verify
    dvt-convert --to-torch --src X.ckpt --dst X.pth.tar
    dvt-convert --backbone --model dvt_deit_small --src deit_small_patch16_224.pth --dst init.ckpt

``--model`` may be left out when the checkpoint identifies its model (the published ones do); the
model can also come from a flat YAML config (``-c``) and the model flags of every dvt_ms command.
Exit status: 0 on success, 1 when the conversion or the verification fails (nothing is written),
2 for bad command-line usage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from ..checkpoint import checkpoint_format
from ..command import run_command
from ..options import ConvertSettings, parse_command
from .errors import ConvertError

PROG = "dvt-convert"
METADATA_VERSION = 1
DESCRIPTION = ("Convert official PyTorch DVT checkpoints (.pth.tar, .pth, .safetensors) to MindSpore checkpoints "
               "(.ckpt or .safetensors) with their evaluation metadata; --to_torch converts back; --backbone "
               "initialises a cascade from a standalone DeiT / T2T-ViT checkpoint.")


def resolve_model(settings: ConvertSettings, shapes: dict[str, tuple],
                  info: dict | None) -> tuple[str, dict, Any, str]:
    """(model name, model arguments, spec, how it was chosen) from the flags/config, the file's own
    record, or the tensor shapes."""
    from ..models import spec_for
    from .mapping import identify_model, infer_num_classes

    chosen = settings.choose_model(info)
    if chosen is None:
        if settings.model_args():
            raise ConvertError("model flags were given without --model: name the model they apply to")
        found = identify_model(shapes)
        return found.name, found.overrides, found.spec, "identified from the checkpoint keys"
    name, overrides, how = chosen
    spec = spec_for(name, **overrides)
    if "num_classes" not in overrides:
        classes = infer_num_classes(shapes, spec.exit_names[-1])
        if classes and classes != spec.num_classes:
            overrides["num_classes"] = classes
            spec = spec_for(name, **overrides)
    return name, overrides, spec, how


def _metadata(name: str, overrides: dict, spec, source, extra: dict | None = None) -> dict[str, Any]:
    from .. import __version__

    meta: dict[str, Any] = {
        "format_version": METADATA_VERSION,
        "model": name,
        "model_args": overrides,
        "num_classes": spec.num_classes,
        "exit_names": list(spec.exit_names),
        "source": {"file": os.path.basename(source.path), "sha256": source.sha256, "container": source.container},
        "converted_by": f"dvt_ms {__version__}",
    }
    meta.update(source.fields)
    if source.tensor_fields:
        meta["tensor_fields"] = dict(source.tensor_fields)
    meta.update(extra or {})
    return meta


def _class_names(path: str, num_classes: int) -> list[str]:
    from ..data import DataError
    from ..data.class_names import check_class_names, read_class_names

    try:
        return check_class_names(read_class_names(path), num_classes, path)
    except DataError as err:
        raise ConvertError(str(err)) from None


def _verify(spec, torch_state, ms_path: str, settings: ConvertSettings) -> None:
    from .verify import TOLERANCE, format_differences, verify_against_torch

    diffs = verify_against_torch(spec, torch_state, ms_path, batch=settings.verify_batch, seed=settings.seed)
    print(format_differences(diffs))
    worst = max(d.max_rel for d in diffs)
    if worst > TOLERANCE:
        raise ConvertError(f"verification failed: max relative logit difference {worst:.3e} is above {TOLERANCE:g}; "
                           f"{settings.dst} was not written")
    print(f"verified: max relative difference {worst:.3e} <= {TOLERANCE:g} at every exit")


def _misfit(path: str, name: str, how: str, state: dict, err) -> ConvertError:
    from .mapping import describe_layout

    return ConvertError(f"{path} does not fit model {name} ({how}): {err.mismatch.describe(limit=6)}. The checkpoint "
                        f"has {describe_layout({k: v.shape for k, v in state.items()})}; is --model (or -c) right?")


def _output_format(settings: ConvertSettings) -> str:
    fmt = checkpoint_format(settings.dst)
    if settings.ckpt_format and settings.ckpt_format != fmt:
        raise ConvertError(f"--format {settings.ckpt_format} does not agree with the output name {settings.dst} "
                           f"(a {fmt} file); use a .{settings.ckpt_format} name")
    return fmt


def _to_mindspore(settings: ConvertSettings) -> None:
    from ..checkpoint import save_checkpoint
    from ..files import atomic_output
    from .mapping import MappingError, expected_state_shapes, map_state_dict, strip_wrapper_prefixes
    from .torch_io import read_source

    fmt = _output_format(settings)
    source = read_source(settings.src)
    state, stripped = strip_wrapper_prefixes(source.state)
    name, overrides, spec, how = resolve_model(settings, {k: v.shape for k, v in state.items()}, source.info)
    try:
        params = map_state_dict(state, expected_state_shapes(spec))
    except MappingError as err:
        raise _misfit(settings.src, name, how, state, err) from None
    meta = _metadata(name, overrides, spec, source, {"source_prefix_stripped": "".join(stripped)} if stripped else None)
    if settings.class_names:
        meta["class_names"] = _class_names(settings.class_names, spec.num_classes)
    with atomic_output(settings.dst) as staged:
        save_checkpoint(params, staged, metadata=meta)
        if settings.verify:
            _verify(spec, params, staged, settings)
    values = sum(int(v.size) for v in params.values())
    kept = [k for k in ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification")
            if k in meta]
    print(f"{PROG}: {name} ({how}; {spec.num_classes} classes), {len(params)} tensors, {values:,} values "
          f"from {source.container!r} of {settings.src}"
          + (f", prefix {''.join(stripped)!r} stripped" if stripped else ""))
    print(f"{PROG}: metadata kept: {', '.join(kept) if kept else 'none in the source'}"
          + (f"; ignored top-level keys: {', '.join(source.ignored)}" if source.ignored else ""))
    print(f"{PROG}: wrote {settings.dst} ({fmt})")


def _to_torch(settings: ConvertSettings) -> None:
    from ..checkpoint import read_checkpoint
    from .mapping import MappingError, expected_state_shapes, to_torch_state_dict
    from .torch_io import sha256_file, write_torch_checkpoint

    if settings.ckpt_format:
        raise ConvertError("--format applies to MindSpore outputs; with --to-torch the --dst suffix decides "
                           "(.safetensors or a torch.save file)")
    if settings.dst.lower().endswith((".ckpt",)):
        raise ConvertError(f"--to-torch writes a PyTorch file, but {settings.dst} is named like a MindSpore checkpoint")
    params, metadata = read_checkpoint(settings.src)
    name, overrides, spec, how = resolve_model(settings, {k: v.shape for k, v in params.items()}, metadata)
    try:
        state = to_torch_state_dict(params, expected_state_shapes(spec))
    except MappingError as err:
        raise _misfit(settings.src, name, how, params, err) from None
    meta = dict(metadata or {})
    if settings.class_names:
        meta["class_names"] = _class_names(settings.class_names, spec.num_classes)
    meta.update({"model": name, "model_args": overrides, "num_classes": spec.num_classes,
                 "source": {"file": os.path.basename(settings.src), "sha256": sha256_file(settings.src),
                            "container": checkpoint_format(settings.src)}})
    if settings.verify:
        _verify(spec, state, settings.src, settings)
    write_torch_checkpoint(state, settings.dst, meta)
    print(f"{PROG}: {name} ({how}; {spec.num_classes} classes), {len(state)} tensors -> {settings.dst} (PyTorch, "
          "official key names)")


def _from_backbone(settings: ConvertSettings) -> None:
    from ..checkpoint import save_checkpoint
    from ..files import atomic_output
    from ..models import DVTCascade, spec_for
    from .backbone import init_from_backbone
    from .torch_io import read_source

    fmt = _output_format(settings)
    if not settings.model:
        raise ConvertError("--backbone needs the DVT model to build: pass --model NAME (or -c CONFIG)")
    name, overrides = settings.model, settings.model_args()
    spec = spec_for(name, **overrides)
    source = read_source(settings.src)
    model = DVTCascade(spec)
    params, report = init_from_backbone(model, source.state, os.path.basename(settings.src))
    counts = report.counts()
    meta = _metadata(name, overrides, spec, source, {"backbone_init": counts})
    for key in ("flops", "anytime_classification", "dynamic_threshold", "budgeted_batch_classification",
                "tensor_fields"):
        meta.pop(key, None)  # a backbone's figures do not describe the cascade
    with atomic_output(settings.dst) as staged:
        save_checkpoint(params, staged, metadata=meta)
        if settings.verify:
            _verify(spec, params, staged, settings)
    print(report.summary())
    print(f"{PROG}: wrote {settings.dst} ({fmt}): {name}, " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def convert(settings: ConvertSettings) -> None:
    """Convert as ``settings`` say (to MindSpore, ``to_torch`` back, or ``backbone`` initialisation);
    nothing is written when any step fails (:class:`ConvertError`)."""
    if os.path.abspath(settings.src) == os.path.abspath(settings.dst):
        raise ConvertError(f"--src and --dst are the same file ({settings.src})")
    try:
        if settings.to_torch:
            _to_torch(settings)
        elif settings.backbone:
            _from_backbone(settings)
        else:
            _to_mindspore(settings)
    except (ValueError, OSError) as err:  # CheckpointError, a bad model, the file system: nothing was written
        text = str(err).strip()
        raise ConvertError(f"{text}{'' if text.endswith(('.', '?')) else '.'} Nothing was written.") from err


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dvt-convert``; returns the exit status (see :mod:`dvt_ms.command`)."""
    return run_command(PROG, lambda: parse_command(ConvertSettings, argv, DESCRIPTION, PROG), convert,
                       (ConvertError,))


if __name__ == "__main__":
    sys.exit(main())
