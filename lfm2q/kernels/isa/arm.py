"""The aarch64 backend: NEON kernels where written, the portable loops for the rest (see
portable.py for the interface). Selected by isa/__init__.py on aarch64."""
from .portable import (QUAD_TOKENS, q4_0_row, q4_0_rows, q4_k_packed, q4_k_packed16_rows, q4_k_packed_rows,  # noqa: F401
                       q4_k_row, q4_k_rows, q5_k_row, q5_k_rows, q6_k_row, q6_k_rows, q6_k_rows2,
                       q8_0_row, q8_0_row2, q8_0_rows, q8_0_rows2, q8_0_rows4)

NAME = "aarch64 (portable loops)"
INTEGER_PREFILL = False
PACKS_Q4_K = False
Q8_0_DECODE_PAIRS = False
Q4_0_INTEGER = False
