"""Flags of ``dvt-eval`` / ``scripts/run_eval.sh`` (the model flags are :data:`dvt_ms.config.MODEL_OPTIONS`)."""

from __future__ import annotations

from ..config import Option

EVAL_MODES = (0, 1, 2)

OPTIONS: tuple[Option, ...] = (
    Option("ckpt", "str", None, "MindSpore checkpoint (.ckpt / .safetensors) to evaluate"),
    Option("data_dir", "str", None, "data root: <data_dir>/val/<class>/<images> (and train/ for --eval_mode 2) "
                                    "for imagefolder; the binary files for cifar10 / cifar100"),
    Option("dataset", "str", "imagefolder", "data set format", ("imagefolder", "cifar10", "cifar100")),
    Option("eval_mode", "int", 1, "0: print the metadata stored with the checkpoint; 1: evaluate with the "
                                  "thresholds stored with the checkpoint; 2: calibrate thresholds on a random "
                                  "subset of the training images, then evaluate"),
    Option("calib_size", "int", 50000, "training images used to calibrate the thresholds (--eval_mode 2)"),
    Option("batch_size", "int", 64, "images per batch"),
    Option("budget", "float", None, "run the most accurate budgeted-batch point costing <= this many GFLOPs "
                                    "per image"),
    Option("thresholds", "list", None, "explicit confidence thresholds, one per exit but the last"),
    Option("device_target", "str", "CPU", "MindSpore device", ("Ascend", "GPU", "CPU")),
    Option("amp_level", "str", "O0", "precision policy (dvt_ms.amp): O0 float32, O2 matrix products in amp_dtype "
                                     "(fp16 inference on Ascend), O3 all amp_dtype", ("O0", "O2", "O3")),
    Option("amp_dtype", "str", "float16", "low-precision type of O2/O3", ("float16", "bfloat16")),
    Option("output_dir", "str", "outputs/eval", "where eval_results.json, the curve CSV, the plot and "
                                                "exit_examples.png go"),
    Option("examples_per_exit", "int", 8, "images per exit in exit_examples.png (image folders; 0: none)"),
    Option("num_parallel_workers", "int", 4, "threads decoding images"),
    Option("seed", "int", 0, "seed of the calibration subset"),
    Option("crop_pct", "float", None, "centre-crop fraction of the resized short side (default 224/256 for "
                                      "imagefolder, 1.0 for CIFAR)"),
    Option("pad_to_buckets", "bool", None, "True: pad early-exit subsets to fixed batch sizes (static shapes); "
                                           "False: one graph per exit for any batch size (dynamic shapes); "
                                           "default: the fastest for the device (CPU: static, finely spaced "
                                           "sizes; Ascend: static, powers of two; GPU: dynamic)"),
    Option("buckets", "list", None, "subset sizes to pad to (default with --pad_to_buckets True: powers of two "
                                    "and the batch size)"),
    Option("throughput_batches", "int", 8, "batches timed for the early exit / all exits / last exit "
                                           "throughput comparison (0 skips it)"),
    Option("throughput_rounds", "int", 3, "timed rounds of the throughput comparison (the median is reported)"),
)
