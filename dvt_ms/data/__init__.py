"""Data readers shared by evaluation and training.

* :func:`scan_image_folder` / :class:`ImageFolder`: ImageNet-style ``root/<class>/<images>`` folders;
* :func:`read_cifar` / :class:`CifarDataset`: CIFAR-10 / CIFAR-100 in their binary format;
* :class:`EvalTransform`: the evaluation preprocessing (short side resize with PIL bicubic, centre
  crop, ImageNet mean / std), scaled to the model's image size;
* :func:`build_eval_dataset`: one of the above by name, with the evaluation transform;
* :func:`iterate_batches`: ordered evaluation mini-batches, read by threads of a ``mindspore.dataset``
  pipeline (:func:`~dvt_ms.data.loader.reader_dataset`, which the training pipeline uses too).

Data sets are random-access (``len(ds)``, ``ds[i] -> (image, label)``). Every problem is a :class:`DataError`
naming the directory or file; :func:`data_error_from` recovers it from MindSpore's wrapped pipeline errors.
"""

from .cifar import CifarDataset, cifar_classes, read_cifar
from .datasets import DATASETS, build_eval_dataset, default_crop_pct
from .errors import DataError, data_error_from
from .folder import IMG_EXTENSIONS, ImageFolder, load_image, scan_image_folder
from .loader import iterate_batches
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, eval_resize_size

__all__ = [
    "DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "CifarDataset", "DataError", "EvalTransform",
    "ImageFolder", "build_eval_dataset", "cifar_classes", "data_error_from", "default_crop_pct", "eval_resize_size",
    "iterate_batches", "load_image", "read_cifar", "scan_image_folder",
]
