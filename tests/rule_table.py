"""The audit table the tests are driven by (it lives in the package, for ``manual-bp verify``)."""

from manual_bp.verify.table import ALL_DTYPES, BF16, F32, F64, ROWS, Row

__all__ = ["ALL_DTYPES", "BF16", "F32", "F64", "ROWS", "Row"]
