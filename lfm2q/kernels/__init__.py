"""numba kernels over GGUF weight bytes.

Every weight matrix reaches a kernel the same way: its raw GGUF bytes as a C-contiguous
`uint8[rows, row_bytes]` view of the memory map, plus its kernel code: the ggml type, with
EXACT added to multiply f32 activations instead of llama.cpp's rounded ones. One compiled
specialisation of each kernel then serves every type; the type switch is per row, which
costs nothing next to the row's arithmetic. Each format module keeps a plain NumPy
dequantizer as the oracle its numba twin is tested against.
"""
from .formats import F16, F32, BF16, Q8_0, SUPPORTED_TYPES, type_name, row_nbytes
from .dispatch import EXACT, dequantize, matmul, matvec
from .lookup import dequant_rows

__all__ = [
    "F16", "F32", "BF16", "Q8_0", "SUPPORTED_TYPES", "type_name", "row_nbytes",
    "EXACT", "dequant_rows", "dequantize", "matmul", "matvec",
]
