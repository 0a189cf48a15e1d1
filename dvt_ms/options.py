"""The settings of every dvt_ms command: one typed dataclass per command, whose fields are its flags
and the keys of its flat YAML config.

Every command parses its flags into its settings class (:func:`parse_command`) and hands them to a
library function (``evaluate``, ``predict``, ``export``, ``train``, ...) that takes only these objects,
so the same call works from Python without the command line::

    from dvt_ms.options import EvalSettings
    from dvt_ms.inference.evaluate import evaluate
    results = evaluate(EvalSettings(ckpt="model.ckpt", data_dir="data/digits", eval_mode=2))

The model flags (:class:`ModelSettings`) are shared by every command that builds a model. A config file
may hold the keys of every command (:data:`ALL_OPTIONS`), so one YAML serves training, evaluation,
export and prediction; each command reads the keys it owns and checks the others' types. Building a
settings object checks every value (:class:`~dvt_ms.config.ConfigError`, exit status 2 in a command).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, make_dataclass
from typing import Any

from .config import ConfigError, Option, Settings, flag, merge_options, parse_settings
from .model_arguments import MODEL_ARGUMENTS

__all__ = [
    "ALL_OPTIONS", "AuditSettings", "ConvertSettings", "DataCheckSettings", "DigitsSettings", "EvalSettings",
    "ExportSettings", "ModelSettings", "PredictSettings", "PredictorSettings", "ServeSettings", "StampSettings",
    "TrainSettings",
    "parse_command",
]


DATA_CHECK_LEVELS = ("header", "full", "off")
NO_CKPT = "no checkpoint: pass --ckpt PATH (a .ckpt or .safetensors file)"


def _require(value: Any, message: str) -> None:
    """A :class:`ConfigError` saying ``message`` unless ``value`` is true."""
    if not value:
        raise ConfigError(message)


def _require_flags(settings: Settings, *names: str) -> None:
    for name in names:
        _require(getattr(settings, name), f"--{name} is required")


def _check_operating_point(settings: Any) -> None:
    """``--thresholds`` or ``--budget``, not both; thresholds are probabilities; a budget is positive."""
    _require(settings.thresholds is None or settings.budget is None, "give either --thresholds or --budget, not both")
    for k, value in enumerate(settings.thresholds or [], start=1):
        _require(0.0 <= value <= 1.0, f"--thresholds: {value:g} for exit {k} is not a probability in [0, 1]"
                 + (f" (the top softmax probability never exceeds 1, so exit {k} would never be taken)"
                    if value > 1 else ""))
    _require(settings.budget is None or settings.budget > 0,
             f"--budget must be a positive number of GFLOPs per image, got {settings.budget}")


@dataclass
class _ModelSettingsBase(Settings):
    """The behaviour of :class:`ModelSettings`, whose fields are made from the model-argument table."""

    def model_args(self) -> dict[str, Any]:
        """The model arguments set here (every model field but ``model`` that is not None)."""
        return {a.name: getattr(self, a.name) for a in MODEL_ARGUMENTS if getattr(self, a.name) is not None}

    def choose_model(self, recorded: dict | None = None):
        """The :class:`~dvt_ms.models.loading.ModelChoice` (name, arguments, chosen by): the model named here
        with its arguments, else the one a checkpoint's metadata records (``model``, ``model_args``) with these
        arguments on top; None when neither names one."""
        from .models.loading import choose_model

        return choose_model(self.model, self.model_args(), recorded)

    def model_spec(self):
        """The :class:`~dvt_ms.models.CascadeSpec` of the named model, without building the network."""
        from .models import spec_for
        from .models.loading import checked_build

        return checked_build(spec_for, self._require_model(), **self.model_args())

    def build_model(self, **extra: Any):
        """``create_model(model, **model arguments, **extra)`` (weights not loaded)."""
        from .models import create_model
        from .models.loading import checked_build

        return checked_build(create_model, self._require_model(), **{**self.model_args(), **extra})

    def load_model(self, path: str):
        """:func:`dvt_ms.models.load_model` of ``path`` with the model named here (else the recorded one)."""
        from .models.loading import load_model

        return load_model(path, self.model, **self.model_args())

    def _require_model(self) -> str:
        if not self.model:
            raise ConfigError("no model: pass -c configs/<model>.yaml or --model NAME (see dvt_ms.list_models())")
        return self.model


#: The model flags: a registered name and overrides of any argument of its spec function, one field per entry of
#: :data:`dvt_ms.model_arguments.MODEL_ARGUMENTS` (every one None unless set).
ModelSettings = make_dataclass(
    "ModelSettings",
    [("model", str | None, flag(None, "registered model name, see dvt_ms.list_models()")),
     *((a.name, a.annotation, flag(None, a.help, kind=a.kind, choices=a.choices)) for a in MODEL_ARGUMENTS)],
    bases=(_ModelSettingsBase,), namespace={"__module__": __name__})
ModelSettings.__doc__ = ("The model flags: a registered name and overrides of any argument of its spec function "
                         "(dvt_ms.model_arguments).")


@dataclass
class EvalSettings(ModelSettings):
    """``dvt-eval``: evaluate a checkpoint in the official modes with real early exit."""

    ckpt: str | None = flag(None, "MindSpore checkpoint (.ckpt / .safetensors) to evaluate", exists="file")
    data_dir: str | None = flag(None, "data root: <data_dir>/val/<class>/<images> (and train/ for --eval_mode 2) for "
                                      "imagefolder; the binary files for cifar10 / cifar100", exists="dir")
    dataset: str = flag("imagefolder", "data set format", choices=("imagefolder", "cifar10", "cifar100"))
    eval_mode: int = flag(1, "0: print the metadata stored with the checkpoint; 1: evaluate with the thresholds "
                             "stored with the checkpoint; 2: calibrate thresholds on a random subset of the training "
                             "images, then evaluate", choices=(0, 1, 2))
    calib_size: int = flag(50000, "training images used to calibrate the thresholds (--eval_mode 2)", minimum=1)
    batch_size: int = flag(64, "images per batch", minimum=1)
    budget: float | None = flag(None, "run the most accurate budgeted-batch point costing <= this many GFLOPs per "
                                      "image")
    thresholds: list[float] | None = flag(None, "explicit confidence thresholds, one per exit but the last")
    device_target: str = flag("CPU", "MindSpore device", choices=("Ascend", "GPU", "CPU"))
    amp_level: str = flag("O0", "precision policy (dvt_ms.amp): O0 float32, O2 matrix products in amp_dtype (fp16 "
                                "inference on Ascend), O3 all amp_dtype", choices=("O0", "O2", "O3"))
    amp_dtype: str = flag("float16", "low-precision type of O2/O3", choices=("float16", "bfloat16"))
    output_dir: str = flag("outputs/eval", "where eval_results.json, the curve CSV, the plot and exit_examples.png go")
    examples_per_exit: int = flag(8, "images per exit in exit_examples.png (image folders; 0: none)", minimum=0)
    num_parallel_workers: int = flag(4, "threads decoding images", minimum=0)
    seed: int = flag(0, "seed of the calibration subset")
    crop_pct: float | None = flag(None, "centre-crop fraction of the resized short side (default 224/256 for "
                                        "imagefolder, 1.0 for CIFAR)")
    pad_to_buckets: bool | None = flag(None, "True: pad early-exit subsets to fixed batch sizes (static shapes); "
                                             "False: one graph per exit for any batch size (dynamic shapes); default: "
                                             "the fastest for the device (CPU: static, finely spaced sizes; Ascend: "
                                             "static, powers of two; GPU: dynamic)")
    buckets: list[int] | None = flag(None, "subset sizes to pad to (default with --pad_to_buckets True: powers of two "
                                           "and the batch size)")
    throughput_batches: int = flag(8, "batches timed for the early exit / all exits / last exit throughput comparison "
                                      "(0 skips it)", minimum=0)
    throughput_rounds: int = flag(3, "timed rounds of the throughput comparison (the median is reported)", minimum=0)

    def check(self) -> None:
        _check_operating_point(self)
        _require(self.ckpt, NO_CKPT)
        if self.eval_mode > 0 and not self.data_dir:
            raise ConfigError(f"--eval_mode {self.eval_mode} needs --data_dir (the folder holding val/"
                              f"{' and train/' if self.eval_mode == 2 else ''}, or the CIFAR binary files)")
        if self.buckets and self.pad_to_buckets is not False and \
                (min(self.buckets) < 1 or max(self.buckets) < self.batch_size):
            raise ConfigError(f"--buckets {self.buckets} must be positive sizes and include one of at least "
                              f"--batch_size {self.batch_size}")


@dataclass
class OperatingSettings(ModelSettings):
    """What ``dvt-export`` and ``dvt-predict`` share: the checkpoint's operating point, class names and crop."""

    ckpt: str | None = flag(None, "MindSpore checkpoint (.ckpt / .safetensors)", exists="file")
    thresholds: list[float] | None = flag(None, "confidence thresholds, one per exit but the last (default: the "
                                                "stored calibrated point)")
    budget: float | None = flag(None, "the most accurate calibrated point costing <= this many GFLOPs per image")
    class_names: str | None = flag(None, "text file with one class name per line (default: the stored names)",
                                   exists="file")
    crop_pct: float | None = flag(None, "with --ckpt: centre-crop fraction (default: the checkpoint's, else 224/256 "
                                        "for imagefolder, 1.0 for CIFAR; exports store theirs)")
    dataset: str = flag("imagefolder", "with --ckpt: the training data set (sets the default crop_pct)",
                                       choices=("imagefolder", "cifar10", "cifar100"))

    def check(self) -> None:
        _check_operating_point(self)


@dataclass
class ExportSettings(OperatingSettings):
    """``dvt-export``: a checkpoint -> one graph per exit and ``manifest.json``."""

    output_dir: str = flag("outputs/export", "folder for the per-exit graphs and manifest.json")
    format: str = flag("mindir", "mindir: MindIR for MindSpore / MindSpore Lite; onnx: ONNX for ONNX Runtime and "
                                 "other ONNX runtimes (pip install -e \".[onnx]\"); both",
                       choices=("mindir", "onnx", "both"))
    device_target: str = flag("CPU", "MindSpore device used to trace the graphs", choices=("Ascend", "GPU", "CPU"))

    def check(self) -> None:
        super().check()
        _require(self.ckpt, NO_CKPT)


@dataclass
class PredictorSettings(OperatingSettings):
    """What ``dvt-predict`` and ``dvt-serve`` share: the model from an export or a checkpoint, what runs it, the
    classes reported per image."""

    exported: str | None = flag(None, "export folder written by dvt-export (manifest.json + per-exit graphs); "
                                      "or give --ckpt with -c CONFIG or --model", exists="dir")
    top_k: int = flag(5, "classes reported per image", minimum=1)
    device_target: str = flag("CPU", "MindSpore device", choices=("Ascend", "GPU", "CPU"))
    runtime: str | None = flag(None, "with --exported: what runs the graphs (default: the export's format; "
                                     "mindspore where both were exported)", choices=("onnxruntime", "mindspore"))
    execution_provider: str = flag("CPUExecutionProvider", "with --runtime onnxruntime: ONNX Runtime's execution "
                                                           "provider")

    def check(self) -> None:
        super().check()
        _require(bool(self.exported) != bool(self.ckpt),
                 "pass exactly one of --exported DIR (a dvt-export folder) and --ckpt FILE")


@dataclass
class PredictSettings(PredictorSettings):
    """``dvt-predict``: classify image files with real early exit, from an export or a checkpoint."""

    images: list[str] | None = flag(None, "image files, folders (recursive) and list files (.txt: one image path per "
                                          "line, # for comments)", exists="path")
    batch_size: int = flag(64, "images per batch", minimum=1)
    output_dir: str = flag("outputs/predict", "where predictions.csv/.jsonl, summary.json and exit_examples.png go")
    strict: bool = flag(False, "stop at the first unreadable image (default: report it and go on)")
    examples_per_exit: int = flag(8, "images per exit in exit_examples.png", minimum=0)
    num_parallel_workers: int = flag(4, "threads decoding images", minimum=0)

    def check(self) -> None:
        super().check()
        _require(self.images, "no images: pass --images with image files, folders or list files")


@dataclass
class ServeSettings(PredictorSettings):
    """``dvt-serve``: classify images sent over HTTP with real early exit, from an export or a checkpoint."""

    host: str = flag("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = flag(8000, "TCP port to listen on (0: any free port, logged at start)", minimum=0)
    batching: str = flag("exit", "exit: one queue per exit, each exit runs batches mixing the images of many requests; "
                                 "request: each request runs through the engine on its own (the baseline)",
                         choices=("exit", "request"))
    max_batch: int = flag(32, "most images per exit batch (--batching request: per engine call)", minimum=1)
    max_wait_ms: float = flag(5.0, "longest an image waits in an exit's queue for the batch to fill", minimum=0)
    max_queue: int = flag(256, "most images admitted and not yet answered; more get 503 with Retry-After",
                          minimum=1)
    max_body_mb: float = flag(16.0, "largest request body in MiB; a larger one gets 413", minimum=0)
    num_parallel_workers: int = flag(2, "threads decoding images", minimum=1)
    warmup: str = flag("all", "all: compile every batch size an exit batch can take before /healthz says ready; "
                              "none: compile each on first use", choices=("all", "none"))
    backend: str = flag("embedded", "embedded: the model runs in this process; ray: each exit is a Ray Serve "
                                    "deployment batching with @serve.batch, undecided images handed to the next "
                                    "exit's replicas (needs the ray extra)", choices=("embedded", "ray"))
    replicas: list[int] = flag([1, 1, 1], "--backend ray: replicas per exit, e.g. 2,1,1 (one number: every exit)")
    ray_address: str | None = flag(None, "--backend ray: the Ray cluster to join (e.g. 10.0.0.5:6379 or auto; unset: "
                                         "RAY_ADDRESS, else a local Ray instance)")

    def check(self) -> None:
        super().check()
        _require(all(isinstance(n, int) and n >= 1 for n in self.replicas),
                 f"--replicas takes positive counts, one per exit (e.g. 2,1,1), got {self.replicas}")
        _require(self.max_body_mb > 0, f"--max_body_mb must be positive, got {self.max_body_mb:g}")
        _require(self.port <= 65535, f"--port must lie in [0, 65535], got {self.port}")


@dataclass
class TrainSettings(ModelSettings):
    """``dvt-train``: train or fine-tune a cascade (every key of the flat YAML configs in ``configs/``)."""

    data_dir: str | None = flag(None, "data root: <data_dir>/train and <data_dir>/val with <class>/<images> for "
                                      "imagefolder; the binary files for cifar10 / cifar100", exists="dir")
    dataset: str = flag("imagefolder", "data set format", choices=("imagefolder", "cifar10", "cifar100"))
    batch_size: int = flag(128, "images per device and step (global batch = batch_size x devices)", minimum=1)
    num_parallel_workers: int = flag(8, "worker processes decoding and augmenting training images and checking "
                                        "them before the run (threads for validation)", minimum=0)
    dataset_sink_mode: bool = flag(False, "feed batches through MindSpore's device queue (data_sink, log_interval "
                                          "steps per call; Ascend/GPU)")
    shuffle: bool = flag(True, "draw a new sample order every epoch (from seed and epoch)")
    data_check: str = flag("header", "before compiling, open every training image: header (format, size, mode; "
                                     "fast), full (decode each one; as slow as an epoch's decoding) or off",
                           choices=DATA_CHECK_LEVELS)
    bad_images: str = flag("fail", "unreadable training images: fail (stop before the first step, naming them all) "
                                   "or skip (leave them out of the sample order, log them and list them in "
                                   "results.json; an image that cannot be decoded later is replaced by another "
                                   "one chosen from the seed)", choices=("fail", "skip"))
    crop_scale: list[float] = flag([0.08, 1.0], "area range of RandomResizedCrop")
    crop_ratio: list[float] = flag([0.75, 1.3333333333333333], "aspect-ratio range of RandomResizedCrop")
    random_crop: bool = flag(True, "RandomResizedCrop (off: plain bicubic resize to img_size)")
    hflip: float = flag(0.5, "probability of a horizontal flip")
    auto_augment: str | None = flag(None, "RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (unset: none)")
    color_jitter: float = flag(0.0, "brightness/contrast/saturation jitter strength (0: off)")
    reprob: float = flag(0.0, "random-erasing probability (after normalisation, per-pixel noise)")
    mixup: float = flag(0.0, "mixup alpha (0: off)")
    cutmix: float = flag(0.0, "cutmix alpha (0: off)")
    mixup_prob: float = flag(1.0, "probability of mixing a batch when mixup or cutmix is on")
    mixup_switch_prob: float = flag(0.5, "probability of cutmix instead of mixup when both are on")
    smoothing: float = flag(0.0, "label smoothing of the one-hot targets")
    crop_pct: float | None = flag(None, "validation: centre-crop fraction of the resized short side (default 224/256 "
                                        "for imagefolder, 1.0 for CIFAR)")
    epoch_size: int = flag(300, "training epochs", minimum=1)
    lr: float = flag(0.001, "peak learning rate (for lr_base_batch images per step when that is set)")
    lr_base_batch: int | None = flag(None, "global batch the lr is quoted for; the lr is scaled linearly to the "
                                           "actual global batch (unset: no scaling)", minimum=1)
    min_lr: float = flag(1e-05, "floor of the cosine decay")
    warmup_epochs: float = flag(20.0, "epochs of linear warm-up", minimum=0)
    warmup_lr: float = flag(1e-06, "learning rate at the first step of the warm-up")
    weight_decay: float = flag(0.05, "AdamW weight decay (not applied to norms, biases, class tokens and position "
                                     "embeddings)")
    betas: list[float] = flag([0.9, 0.999], "AdamW betas")
    opt_eps: float = flag(1e-08, "AdamW epsilon")
    clip_grad: float | None = flag(None, "clip the global gradient norm to this value (unset: no clipping)")
    ema: bool = flag(False, "keep an exponential moving average of the weights")
    ema_decay: float = flag(0.99996, "EMA decay per step")
    amp_level: str = flag("O0", "precision policy (dvt_ms.amp): O0 float32; O2 matrix products in amp_dtype, norms, "
                                "softmax, attention logits and loss in float32; O3 all amp_dtype",
                                choices=("O0", "O2", "O3"))
    amp_dtype: str = flag("float16", "low-precision type of O2/O3 (bfloat16 where the device has it)",
                                     choices=("float16", "bfloat16"))
    loss_scale_type: str = flag("auto", "auto: dynamic on Ascend/GPU under O2/O3, fixed otherwise",
                                        choices=("auto", "dynamic", "fixed"))
    loss_scale: float = flag(1024.0, "fixed loss scale, or the initial one of dynamic scaling", minimum=1)
    loss_scale_factor: float = flag(2.0, "dynamic scaling: factor of each change")
    loss_scale_window: int = flag(1000, "dynamic scaling: finite steps before the scale grows")
    device_target: str | None = flag(None, "MindSpore device (unset: the one MindSpore detects)",
                                           choices=("Ascend", "GPU", "CPU"))
    mode: int = flag(0, "0: graph mode, 1: PyNative (the train step is compiled in both)", choices=(0, 1))
    jit_level: str = flag("auto", "Ascend compile level (auto: MindSpore's default for the SoC)",
                                  choices=("auto", "O0", "O1", "O2"))
    precision_mode: str = flag("auto", "Ascend operator precision mode (auto: must_keep_origin_dtype, "
                                       "allow_fp32_to_fp16 on 910A; see dvt_ms.device)",
                                       choices=("auto", "must_keep_origin_dtype", "allow_fp32_to_fp16", "force_fp32"))
    distribute: bool = flag(False, "data-parallel training over the devices launched by msrun or a rank table")
    seed: int = flag(42, "seed of weights, sample order, augmentation and dropout")
    ckpt_save_dir: str = flag("outputs/train", "checkpoints, resolved config, results.json and logs")
    ckpt_interval: int = flag(1, "also keep epoch_<N>.ckpt every this many epochs (0: never)", minimum=0)
    keep_checkpoint_max: int = flag(5, "epoch_<N>.ckpt and step_<N>.state.ckpt files kept, each (oldest removed "
                                       "first; 0: all)", minimum=0)
    ckpt_every_steps: int = flag(0, "also save the training state every this many steps inside an epoch "
                                    "(latest.state.ckpt and step_<N>.state.ckpt; --resume continues from it "
                                    "exactly; 0: only at the end of an epoch)", minimum=0)
    resume: str | None = flag(None, "resume from a training state: a *.state.ckpt file, or a directory holding "
                                    "latest.state.ckpt", exists="path")
    auto_resume: bool = flag(False, "resume from <ckpt_save_dir>/latest.state.ckpt when it exists")
    pretrained: str | None = flag(None, "initial weights (.ckpt / .safetensors); heads are re-initialised when "
                                        "num_classes differs", exists="file")
    val_interval: int = flag(1, "validate every this many epochs and after the last (0: never)", minimum=0)
    log_interval: int = flag(100, "steps between log lines", minimum=1)
    max_bad_steps: int = flag(100, "stop when the loss is NaN/inf for more than this many steps in a row (checked "
                                   "every log_interval steps; 0: never stop)", minimum=0)

    def check(self) -> None:
        self._require_model()
        _require_flags(self, "data_dir")
        self._check_schedule()

    def _check_schedule(self) -> None:
        _require(self.lr > 0, f"--lr must be positive, got {self.lr:g}")
        _require(0 <= self.min_lr <= self.lr, f"--min_lr must lie in [0, lr={self.lr:g}], got {self.min_lr:g}")
        _require(0 <= self.warmup_lr, f"--warmup_lr must be >= 0, got {self.warmup_lr:g}")
        if self.warmup_epochs > self.epoch_size:
            raise ConfigError(f"--warmup_epochs must lie in [0, epoch_size={self.epoch_size}], "
                              f"got {self.warmup_epochs}")
        if len(self.betas) != 2:
            raise ConfigError(f"--betas needs two values, got {self.betas}")


@dataclass
class AuditSettings(TrainSettings):
    """``dvt-audit``: the graphs of a training config, compiled and checked (always on the CPU)."""

    graphs: str = flag("all", "which graphs: all, train (the steps at O0 and O2) or inference (validation, stages, "
                              "exports)", choices=("all", "train", "inference"))
    audit_dir: str = flag("outputs/audit", "where audit.json (and, with --keep_dumps, the IR dumps) go")
    keep_dumps: bool = flag(False, "keep MindSpore's IR files of every graph under <audit_dir>/ir")

    def check(self) -> None:
        self._require_model()  # no data: the audit compiles on random batches
        self._check_schedule()
        if self.device_target not in (None, "CPU"):
            raise ConfigError(f"dvt-audit compiles on the CPU (as Ascend would see the graphs); drop "
                              f"--device_target {self.device_target}")


@dataclass
class ConvertSettings(ModelSettings):
    """``dvt-convert``: official PyTorch checkpoints -> MindSpore, back, or a cascade from a backbone."""

    src: str | None = flag(None, "source checkpoint", exists="file")
    dst: str | None = flag(None, "output file (.ckpt or .safetensors; with --to_torch .pth/.pth.tar or .safetensors)")
    ckpt_format: str | None = flag(None, "output format of a MindSpore checkpoint; must agree with the --dst "
                                         "suffix", choices=("ckpt", "safetensors"), aliases=("format",))
    to_torch: bool = flag(False, "MindSpore checkpoint -> PyTorch state dict with the official key names",
                          aliases=("to-torch",))
    backbone: bool = flag(False, "--src is a standalone DeiT-small / T2T-ViT checkpoint: initialise every exit "
                                 "from it")
    verify: bool = flag(False, "compare logits with the PyTorch reference on a random batch (needs torch)")
    verify_batch: int = flag(2, "batch size of --verify", minimum=1, aliases=("verify-batch",))
    seed: int = flag(0, "seed of the --verify batch")
    class_names: str | None = flag(None, "text file with one class name per line, stored with the weights "
                                         "(dvt-predict and dvt-export show them)", aliases=("class-names",),
                                   exists="file")

    def check(self) -> None:
        _require_flags(self, "src", "dst")
        if self.to_torch and self.backbone:
            raise ConfigError("--to_torch and --backbone cannot be combined")
        if self.class_names and self.backbone:
            raise ConfigError("--class_names does not apply to --backbone (a backbone's heads are re-initialised)")


@dataclass
class StampSettings(Settings):
    """``python -m dvt_ms stamp``: store calibrated thresholds and evaluation figures in a checkpoint."""

    ckpt: str | None = flag(None, "checkpoint whose weights are kept", exists="file")
    results: str | None = flag(None, "eval_results.json written by dvt-eval --eval_mode 2", exists="file")
    dst: str | None = flag(None, "output checkpoint (default: overwrite --ckpt)")

    def check(self) -> None:
        _require_flags(self, "ckpt", "results")


@dataclass
class DataCheckSettings(Settings):
    """``python -m dvt_ms data-check``: find every unreadable image of a data set before a run does."""

    data_dir: str | None = flag(None, "data root holding train/ and val/ (<class>/<images> below each), or one "
                                      "such class folder tree", exists="dir")
    dataset: str = flag("imagefolder", "data set format (only image folders have files to check)",
                        choices=("imagefolder", "cifar10", "cifar100"))
    split: str = flag("all", "which split of --data_dir: train, val, or all (every split present; a folder "
                             "without train/ and val/ is checked as one split)", choices=("train", "val", "all"))
    data_check: str = flag("header", "header: format, size and mode of every file (fast); full: decode every "
                                     "file", choices=DATA_CHECK_LEVELS)
    num_parallel_workers: int = flag(4, "processes checking files (large folders)", minimum=0)
    output: str | None = flag(None, "also write the unreadable files (path<TAB>reason per line) to this file")

    def check(self) -> None:
        _require_flags(self, "data_dir")
        _require(self.data_check != "off", "--data_check off checks nothing: use header or full")
        _require(self.dataset == "imagefolder", f"--dataset {self.dataset}: only image folders have image files "
                                                "to check (CIFAR's binary files are checked when opened)")


@dataclass
class DigitsSettings(Settings):
    """``python -m dvt_ms.demo.digits``: write scikit-learn's handwritten digits as an image folder."""

    out: str = flag("data/digits", "output folder (gets train/ and val/)")
    img_size: int = flag(32, "side of the written images", minimum=8)
    val_fraction: float = flag(0.25, "share of each class kept for val/")
    seed: int = flag(0, "seed of the split")

    def check(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val_fraction must lie in (0, 1), got {self.val_fraction}")


COMMAND_SETTINGS: tuple[type[Settings], ...] = (
    TrainSettings, EvalSettings, ExportSettings, PredictSettings, ServeSettings, ConvertSettings, AuditSettings,
    DataCheckSettings,
)

#: every key a config file may hold (each command's own, validated by every command)
ALL_OPTIONS: tuple[Option, ...] = tuple(merge_options(*(cls.options() for cls in COMMAND_SETTINGS)))


def parse_command(cls: type, argv: Sequence[str] | None, description: str, prog: str):
    """The settings of a command from defaults < YAML (``-c``, which may hold any command's keys) < flags."""
    return parse_settings(cls, argv, description, prog, shared_with=ALL_OPTIONS)
