"""Test-wide settings: float64 available, every implicit rank broadcast and dtype promotion raises.

A rank broadcast in a forward pass is a sum the backward must write by hand; making it an error
keeps every such sum explicit.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
