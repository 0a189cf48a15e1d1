"""Flags of ``dvt-train`` / ``scripts/run_train.sh`` (the model flags are :data:`dvt_ms.config.MODEL_OPTIONS`).

Every flag is also a key of the flat YAML configs in ``configs/``. Boolean flags take a value
(``--distribute True``).
"""

from __future__ import annotations

from ..config import Option

OPTIONS: tuple[Option, ...] = (
    # ---- data
    Option("data_dir", "str", None, "data root: <data_dir>/train and <data_dir>/val with <class>/<images> for "
                                    "imagefolder; the binary files for cifar10 / cifar100"),
    Option("dataset", "str", "imagefolder", "data set format", ("imagefolder", "cifar10", "cifar100")),
    Option("batch_size", "int", 128, "images per device and step (global batch = batch_size x devices)"),
    Option("num_parallel_workers", "int", 8, "worker processes decoding and augmenting training images "
                                             "(threads for validation)"),
    Option("dataset_sink_mode", "bool", False, "feed batches through MindSpore's device queue "
                                               "(data_sink, log_interval steps per call; Ascend/GPU)"),
    Option("shuffle", "bool", True, "draw a new sample order every epoch (from seed and epoch)"),
    Option("crop_scale", "list", [0.08, 1.0], "area range of RandomResizedCrop"),
    Option("crop_ratio", "list", [0.75, 1.3333333333333333], "aspect-ratio range of RandomResizedCrop"),
    Option("random_crop", "bool", True, "RandomResizedCrop (off: plain bicubic resize to img_size)"),
    Option("hflip", "float", 0.5, "probability of a horizontal flip"),
    Option("auto_augment", "str", None, "RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (unset: none)"),
    Option("color_jitter", "float", 0.0, "brightness/contrast/saturation jitter strength (0: off)"),
    Option("reprob", "float", 0.0, "random-erasing probability (after normalisation, per-pixel noise)"),
    Option("mixup", "float", 0.0, "mixup alpha (0: off)"),
    Option("cutmix", "float", 0.0, "cutmix alpha (0: off)"),
    Option("mixup_prob", "float", 1.0, "probability of mixing a batch when mixup or cutmix is on"),
    Option("mixup_switch_prob", "float", 0.5, "probability of cutmix instead of mixup when both are on"),
    Option("smoothing", "float", 0.0, "label smoothing of the one-hot targets"),
    Option("crop_pct", "float", None, "validation: centre-crop fraction of the resized short side (default "
                                      "224/256 for imagefolder, 1.0 for CIFAR)"),
    # ---- schedule and optimizer
    Option("epoch_size", "int", 300, "training epochs"),
    Option("lr", "float", 1e-3, "peak learning rate (for lr_base_batch images per step when that is set)"),
    Option("lr_base_batch", "int", None, "global batch the lr is quoted for; the lr is scaled linearly to "
                                         "the actual global batch (unset: no scaling)"),
    Option("min_lr", "float", 1e-5, "floor of the cosine decay"),
    Option("warmup_epochs", "float", 20.0, "epochs of linear warm-up"),
    Option("warmup_lr", "float", 1e-6, "learning rate at the first step of the warm-up"),
    Option("weight_decay", "float", 0.05, "AdamW weight decay (not applied to norms, biases, class tokens "
                                          "and position embeddings)"),
    Option("betas", "list", [0.9, 0.999], "AdamW betas"),
    Option("opt_eps", "float", 1e-8, "AdamW epsilon"),
    Option("clip_grad", "float", None, "clip the global gradient norm to this value (unset: no clipping)"),
    Option("ema", "bool", False, "keep an exponential moving average of the weights"),
    Option("ema_decay", "float", 0.99996, "EMA decay per step"),
    # ---- precision
    Option("amp_level", "str", "O0", "precision policy (dvt_ms.amp): O0 float32; O2 matrix products in amp_dtype, "
                                     "norms, softmax, attention logits and loss in float32; O3 all amp_dtype",
           ("O0", "O2", "O3")),
    Option("amp_dtype", "str", "float16", "low-precision type of O2/O3 (bfloat16 where the device has it)",
           ("float16", "bfloat16")),
    Option("loss_scale_type", "str", "auto", "auto: dynamic on Ascend/GPU under O2/O3, fixed otherwise",
           ("auto", "dynamic", "fixed")),
    Option("loss_scale", "float", 1024.0, "fixed loss scale, or the initial one of dynamic scaling"),
    Option("loss_scale_factor", "float", 2.0, "dynamic scaling: factor of each change"),
    Option("loss_scale_window", "int", 1000, "dynamic scaling: finite steps before the scale grows"),
    # ---- runtime
    Option("device_target", "str", None, "MindSpore device (unset: the one MindSpore detects)",
           ("Ascend", "GPU", "CPU")),
    Option("mode", "int", 0, "0: graph mode, 1: PyNative (the train step is compiled in both)"),
    Option("jit_level", "str", "auto", "Ascend compile level (auto: MindSpore's default for the SoC)",
           ("auto", "O0", "O1", "O2")),
    Option("precision_mode", "str", "auto", "Ascend operator precision mode (auto: must_keep_origin_dtype, "
                                            "allow_fp32_to_fp16 on 910A; see dvt_ms.device)",
           ("auto", "must_keep_origin_dtype", "allow_fp32_to_fp16", "force_fp32")),
    Option("distribute", "bool", False, "data-parallel training over the devices launched by msrun or "
                                        "a rank table"),
    Option("seed", "int", 42, "seed of weights, sample order, augmentation and dropout"),
    # ---- checkpoints, validation, logs
    Option("ckpt_save_dir", "str", "outputs/train", "checkpoints, resolved config, results.json and logs"),
    Option("ckpt_interval", "int", 1, "also keep epoch_<N>.ckpt every this many epochs (0: never)"),
    Option("keep_checkpoint_max", "int", 5, "epoch_<N>.ckpt files kept (oldest removed first)"),
    Option("resume", "str", None, "resume from a training state: a *.state.ckpt file, or a directory "
                                  "holding latest.state.ckpt"),
    Option("auto_resume", "bool", False, "resume from <ckpt_save_dir>/latest.state.ckpt when it exists"),
    Option("pretrained", "str", None, "initial weights (.ckpt / .safetensors); heads are re-initialised "
                                      "when num_classes differs"),
    Option("val_interval", "int", 1, "validate every this many epochs and after the last (0: never)"),
    Option("log_interval", "int", 100, "steps between log lines"),
    Option("max_bad_steps", "int", 100, "stop when the loss is NaN/inf for more than this many steps in a row "
                                        "(checked every log_interval steps; 0: never stop)"),
)
