"""``manifest.json`` of an exported DVT: what each per-exit graph takes and gives, and how to run them.

An export folder holds one graph per exit in each exported format (``formats``: MindIR for MindSpore and
MindSpore Lite, ONNX for ONNX Runtime and what runs ONNX) and this manifest: the model and its arguments,
each exit's grid, files and their sha256, input names and shapes (batch ``-1``), which earlier outputs
feed it (the reuse wiring), cumulative GFLOPs; the thresholds to run, with the calibrated table and curve
they were chosen from; class names; the preprocessing; the MindSpore version and ONNX opset that wrote it.
:func:`read_manifest` checks all of it against the files before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ManifestError

__all__ = ["FORMAT", "MANIFEST_NAME", "ExportedExit", "Manifest", "read_manifest", "sha256_of", "write_manifest"]

FORMAT = "dvt_ms.exported"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: MindIR only, before the ONNX fields
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ExportedExit:
    """One exit's graph: ``inputs`` are ``{"name", "shape"}`` in call order (images, then the previous
    exit's ``features`` / ``relations`` where it reuses them); ``outputs`` name what it returns."""

    name: str
    grid: int
    file: str | None  # the MindIR file ("" or None when MindIR was not exported)
    sha256: str | None
    inputs: list[dict[str, Any]]
    outputs: list[str]
    feature_reuse: bool
    relation_reuse: bool
    cumulative_gflops: float
    onnx_file: str | None = None
    onnx_sha256: str | None = None

    @property
    def input_names(self) -> list[str]:
        """The names of :attr:`inputs`, in call order."""
        return [i["name"] for i in self.inputs]

    def files(self) -> dict[str, tuple[str, str]]:
        """Format -> (file, sha256) of what was exported for this exit."""
        found = {"mindir": (self.file, self.sha256), "onnx": (self.onnx_file, self.onnx_sha256)}
        return {fmt: pair for fmt, pair in found.items() if pair[0]}


@dataclass
class Manifest:
    """The contents of ``manifest.json`` (see the module docstring); ``directory`` is where it was read."""

    model: str
    model_args: dict[str, Any]
    num_classes: int
    img_size: int
    in_chans: int
    exits: list[ExportedExit]
    thresholds: list[float]
    thresholds_chosen_by: str
    preprocessing: dict[str, Any]
    mindspore_version: str
    dvt_ms_version: str
    class_names: list[str] | None = None
    dynamic_threshold: list[list[float]] | None = None
    budgeted_batch_classification: list[list[float]] | None = None
    formats: list[str] = field(default_factory=lambda: ["mindir"])
    onnx_opset: int | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    directory: str = field(default="", compare=False)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def cumulative_gflops(self) -> list[float]:
        return [e.cumulative_gflops for e in self.exits]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: str) -> Manifest:
        where = os.path.join(directory, MANIFEST_NAME)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{where}: not a dvt_ms export manifest (format is not {FORMAT!r})")
        if data.get("format_version") not in READABLE_VERSIONS:
            raise ManifestError(f"{where}: format_version {data.get('format_version')} is not supported "
                                f"(this dvt_ms reads {FORMAT_VERSION}); export the model again")
        try:
            exits = [ExportedExit(**e) for e in data["exits"]]
            return cls(**{**data, "exits": exits}, directory=directory)
        except (KeyError, TypeError) as err:
            raise ManifestError(f"{where}: missing or unexpected field ({err})") from None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, directory: str) -> str:
    """Write ``directory/manifest.json`` (the caller writes the whole folder atomically)."""
    path = os.path.join(directory, MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")
    return path


def _major(version: str) -> str:
    return version.split(".")[0]


def read_manifest(directory: str, mindspore_version: str | None = None) -> Manifest:
    """Read and verify an export folder: the manifest parses, every exit file exists with its recorded
    sha256, and it was written by the same MindSpore major version as ``mindspore_version`` (default:
    the installed one). Raises :class:`ManifestError` naming the problem."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise ManifestError(f"export folder not found: {directory}")
    if not os.path.isfile(path):
        raise ManifestError(f"{directory} has no {MANIFEST_NAME}: not a folder written by dvt-export")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = Manifest.from_json(json.load(f), directory)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    if not manifest.exits:
        raise ManifestError(f"{path}: lists no exits")
    unknown = sorted(set(manifest.formats) - {"mindir", "onnx"})
    if unknown or not manifest.formats:
        raise ManifestError(f"{path}: formats {manifest.formats!r} must be one or both of mindir, onnx")
    if "mindir" in manifest.formats:
        if mindspore_version is None:
            import mindspore

            mindspore_version = mindspore.__version__
        if _major(manifest.mindspore_version) != _major(mindspore_version):
            raise ManifestError(f"{path}: exported with MindSpore {manifest.mindspore_version}, but MindSpore "
                                f"{mindspore_version} is installed (the major versions must match); export again")
    for e in manifest.exits:
        files = e.files()
        for fmt in manifest.formats:
            if fmt not in files:
                raise ManifestError(f"{path}: exit {e.name!r} lists no {fmt} file, though the export has that format")
            file = os.path.join(directory, files[fmt][0])
            if not os.path.isfile(file):
                raise ManifestError(f"{path}: exit {e.name!r} needs {files[fmt][0]}, which is missing from {directory}")
            if sha256_of(file) != files[fmt][1]:
                raise ManifestError(f"{file}: sha256 does not match the manifest (the file was changed or damaged); "
                                    "export again")
    for k, e in enumerate(manifest.exits):
        names = [i.get("name") for i in e.inputs] if isinstance(e.inputs, list) else []
        wants_relations = k + 1 < manifest.num_exits and manifest.exits[k + 1].relation_reuse
        if (names[:1] != ["images"] or ("features" in names) != e.feature_reuse
                or ("relations" in names) != e.relation_reuse or ("relations" in e.outputs) != wants_relations):
            raise ManifestError(f"{path}: exit {e.name!r}: its inputs {names} and outputs {e.outputs} do not match "
                                "the reuse wiring the manifest states")
    if not isinstance(manifest.thresholds, list) or len(manifest.thresholds) != manifest.num_exits:
        raise ManifestError(f"{path}: thresholds {manifest.thresholds!r} are not one per exit ({manifest.num_exits})")
    if not isinstance(manifest.preprocessing, dict):
        raise ManifestError(f"{path}: preprocessing must be a mapping, got {manifest.preprocessing!r}")
    if manifest.class_names is not None and len(manifest.class_names) != manifest.num_classes:
        raise ManifestError(f"{path}: {len(manifest.class_names)} class names for {manifest.num_classes} classes")
    return manifest
