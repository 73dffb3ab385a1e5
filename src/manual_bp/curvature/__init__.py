"""Curvature from the handwritten backward pass: BackPACK's second-order quantities and K-FAC.

* :mod:`~manual_bp.curvature.factors` — each loss's Hessian factor S (H = S Sᵀ) with respect
  to the network's output, exact and Monte-Carlo;
* :mod:`~manual_bp.curvature.columns` — the columns of S pushed through the backward pass;
* :mod:`~manual_bp.curvature.ggn` — the diagonal of the generalized Gauss–Newton matrix, for
  every layer kind, Dense's cheap route, and GGN-vector products;
* :mod:`~manual_bp.curvature.hessian` — the Hessian's diagonal, for networks of Dense, Conv2D,
  pooling and elementwise activations (each activation's second derivative beside its rule);
* :mod:`~manual_bp.curvature.kronecker` — KFAC and KFLR Kronecker factors of Dense, Conv2D,
  recurrent and attention layers, KFAC-expand and KFAC-reduce for weights shared over positions;
* :mod:`~manual_bp.curvature.optim` — the K-FAC preconditioner as an optax transformation;
* :mod:`~manual_bp.curvature.diagonal` — diagonal-GGN preconditioning as an optax transformation.
"""

from .diagonal import DiagGgnState, diag_ggn_preconditioner
from .factors import FACTOR_LOSSES, hessian_factor, loss_hessian, mc_hessian_factor
from .ggn import dense_diag_ggn, diag_ggn, ggn_vector_product
from .hessian import HESSIAN_KINDS, hessian_diag
from .kronecker import (
    KFAC_KINDS,
    SETTINGS,
    WEIGHTS,
    Kronecker,
    Projection,
    conv_patches,
    kfac_factors,
    layer_projections,
)
from .optim import KfacState, kfac

__all__ = [
    "FACTOR_LOSSES",
    "HESSIAN_KINDS",
    "KFAC_KINDS",
    "SETTINGS",
    "WEIGHTS",
    "DiagGgnState",
    "KfacState",
    "Kronecker",
    "Projection",
    "conv_patches",
    "dense_diag_ggn",
    "diag_ggn",
    "diag_ggn_preconditioner",
    "ggn_vector_product",
    "hessian_diag",
    "hessian_factor",
    "kfac",
    "kfac_factors",
    "layer_projections",
    "loss_hessian",
    "mc_hessian_factor",
]
