"""Datasets in the forms users keep them on disk, read as data (nothing in a file is executed).

``load_dataset(spec, split)`` takes a spec string ``KIND:PATH[?option=value&...]``:

=============================  ==========================================================================
``digits``                     scikit-learn's bundled 8x8 digits, stratified 80/20 split (seed 0)
``cifar10:DIR``                CIFAR-10: ``cifar-10-batches-py`` (python version, read by a restricted
                               unpickler) or ``cifar-10-batches-bin``, the folder itself or a root holding it
``cifar100:DIR``               CIFAR-100: ``cifar-100-python`` or ``cifar-100-binary``; ``?labels=coarse``
                               for the 20 superclasses (default ``fine``, 100 classes)
``mnist:DIR``                  MNIST IDX files, plain or ``.gz``; also ``raw/`` or a torchvision root
                               (``MNIST/raw``)
``fashion-mnist:DIR``          Fashion-MNIST IDX, the same layouts (``FashionMNIST/raw``)
``svhn:DIR``                   SVHN ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 is the digit 0);
                               ``?extra=1`` adds ``extra_32x32.mat`` to the training split
``fer2013:FILE.csv``           FER-2013 CSV (``emotion,pixels,Usage``; a folder holding ``fer2013.csv``
                               works too); train = Training, test = PublicTest + PrivateTest, or
                               ``?usage=PrivateTest``
``imagefolder:DIR``            one subfolder per class (RAF-DB, CK+), PNG/JPEG/... via Pillow; ``train/``
                               and ``test/`` subfolders give the splits; ``?resize=48x48&grayscale=1``
``npz:FILE.npz``               arrays ``x`` and ``y`` (or ``x_<split>``/``y_<split>``), optional ``classes``
=============================  ==========================================================================

8-bit images stay ``uint8`` in host memory and become float32 in [0, 1] when used
(:attr:`Dataset.x`, :meth:`Dataset.tensors`, or per batch in :meth:`Dataset.batches`, which
streams from pinned memory on CUDA). Every dataset carries its class names, channel count,
image size and its own statistics (:attr:`Dataset.normalization`); the normalisation a model
was trained with lives in the checkpoint's meta, wins, and is applied by
``Checkpoint.prepare``.
"""
from .dataset import Dataset, NormalizationWarning, normalization_of, stratified_indices, to_float
from .specs import KINDS, SPLITS, as_dataset, load_dataset, parse_spec, shape_hint, spec_needs_file

__all__ = ["Dataset", "load_dataset", "as_dataset", "normalization_of", "spec_needs_file", "SPLITS", "KINDS",
           "NormalizationWarning", "parse_spec", "shape_hint", "stratified_indices", "to_float"]
