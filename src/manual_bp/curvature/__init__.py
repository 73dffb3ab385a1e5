"""Curvature from the handwritten backward pass: BackPACK's second-order quantities and K-FAC.

* :mod:`~manual_bp.curvature.factors` — each loss's Hessian factor S (H = S Sᵀ) with respect
  to the network's output, exact and Monte-Carlo;
* :mod:`~manual_bp.curvature.columns` — the columns of S pushed through the backward pass;
* :mod:`~manual_bp.curvature.ggn` — the diagonal of the generalized Gauss–Newton matrix, for
  every layer kind, Dense's cheap route, and GGN-vector products;
* :mod:`~manual_bp.curvature.kronecker` — KFAC and KFLR Kronecker factors of Dense and Conv2D
  layers, KFAC-expand and KFAC-reduce for layers shared over positions;
* :mod:`~manual_bp.curvature.optim` — the K-FAC preconditioner as an optax transformation.
"""

from .factors import FACTOR_LOSSES, hessian_factor, loss_hessian, mc_hessian_factor
from .ggn import dense_diag_ggn, diag_ggn, ggn_vector_product
from .kronecker import KFAC_KINDS, SETTINGS, Kronecker, conv_patches, kfac_factors
from .optim import KfacState, kfac

__all__ = [
    "FACTOR_LOSSES",
    "KFAC_KINDS",
    "SETTINGS",
    "KfacState",
    "Kronecker",
    "conv_patches",
    "dense_diag_ggn",
    "diag_ggn",
    "ggn_vector_product",
    "hessian_factor",
    "kfac",
    "kfac_factors",
    "loss_hessian",
    "mc_hessian_factor",
]
