"""The embedding lookup: rows of the token table as f32, one compiled function per weight type.

One function switching over every type (as dispatch.row_dequant does) made a cold start compile
all eleven dequantizers, 13 s of it, to use one; here only the table's own type compiles, and a
warm start loads one small kernel. Rows are looked up one after another: a prompt's few thousand
rows take milliseconds. The eleven functions are written out because numba's cache cannot tell
apart functions made by one factory (closures): it recompiled them on every run.
"""
import numpy as np
from numba import njit

from .floats import dequant_bf16, dequant_f16, dequant_f32
from .formats import BF16, F16, F32, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0
from .kquants import dequant_q4_k, dequant_q5_k, dequant_q6_k
from .q4_0 import dequant_q4_0, dequant_q4_1, dequant_q5_0, dequant_q5_1
from .q8_0 import dequant_q8_0


@njit(error_model="numpy", cache=True)
def _rows_f32(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_f32(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_f16(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_f16(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_bf16(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_bf16(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q8_0(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q8_0(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q4_0(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q4_0(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q4_1(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q4_1(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q5_0(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q5_0(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q5_1(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q5_1(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q4_k(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q4_k(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q5_k(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q5_k(w, ids[i], out[i])


@njit(error_model="numpy", cache=True)
def _rows_q6_k(w, ids, out):
    for i in range(ids.shape[0]):
        dequant_q6_k(w, ids[i], out[i])


_ROWS = {F32: _rows_f32, F16: _rows_f16, BF16: _rows_bf16, Q8_0: _rows_q8_0, Q4_0: _rows_q4_0,
         Q4_1: _rows_q4_1, Q5_0: _rows_q5_0, Q5_1: _rows_q5_1, Q4_K: _rows_q4_k, Q5_K: _rows_q5_k,
         Q6_K: _rows_q6_k}


def dequant_rows(w: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] of W as f32 (W uint8[rows, row_bytes] of ggml type qtype, ids int64[n],
    out f32[n, cols]); NaN rows for a type without a dequantizer (the loader rejects those)."""
    rows = _ROWS.get(qtype)
    if rows is None:
        out[:] = np.nan
    else:
        rows(w, ids, out)
