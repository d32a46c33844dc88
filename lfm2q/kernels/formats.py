"""ggml type codes and sizes the kernels understand (names and sizes come from gguf-py)."""
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

F32 = int(GGMLQuantizationType.F32)
F16 = int(GGMLQuantizationType.F16)
BF16 = int(GGMLQuantizationType.BF16)
Q8_0 = int(GGMLQuantizationType.Q8_0)
Q4_0 = int(GGMLQuantizationType.Q4_0)
Q4_1 = int(GGMLQuantizationType.Q4_1)
Q5_0 = int(GGMLQuantizationType.Q5_0)
Q5_1 = int(GGMLQuantizationType.Q5_1)
Q4_K = int(GGMLQuantizationType.Q4_K)
Q5_K = int(GGMLQuantizationType.Q5_K)
Q6_K = int(GGMLQuantizationType.Q6_K)

# Types the engine runs. Another format joins by adding its row kernels to matmul.py.
SUPPORTED_TYPES = frozenset({F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K})

# fp16 -> fp32 for every bit pattern: a 256 KiB table that stays in L2 and turns the scale
# of a block into one load. ARM's hardware conversion raises FE_INVALID on the signalling-NaN
# patterns (x86's does not): numpy would warn in every process; the NaNs are what we want.
with np.errstate(invalid="ignore"):
    F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def type_name(qtype: int) -> str:
    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return f"type#{qtype}"


def block_size(qtype: int) -> tuple[int, int]:
    """(weights per block, bytes per block)."""
    return GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]


def row_nbytes(qtype: int, cols: int) -> int:
    n, nbytes = block_size(qtype)
    if cols % n:
        raise ValueError(f"row of {cols} is not a multiple of {type_name(qtype)}'s block of {n}")
    return cols // n * nbytes
