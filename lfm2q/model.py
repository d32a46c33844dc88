"""The LFM2 forward pass over a validated GGUF file (docs/architecture.md §3).

    token_embd -> N x [ x += op(rmsnorm(x)); x += ffn(rmsnorm(x)) ] -> rmsnorm -> LM head

`op` is the gated short convolution or grouped-query attention, per layer. Prefill runs a
chunk of positions at once (AVX2 integer kernels, 4 positions per weight row, or BLAS on
dequantized weight tiles); decode runs one token through fused kernels, one numba call per
block.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from . import blocks, compiler_pages, hugepages
from .cache import Snapshot, State
from .errors import GenerationError
from .gguf_model import Experts, GGUFFile, Lfm2Config, Weight
from .kernels import EXACT, dequant_rows, matmul, matvec
from .kernels.dispatch import integer_prefill, kinds_for, pack, packable, packed_code, single_threaded_blas
from .kernels.repack import packed_shape

PREFILL_CHUNK = 256  # positions per prefill step: bounds activation memory on long prompts
# Prompts up to this many tokens may run token by token through decode. Where prefill goes
# through BLAS (types without integer kernels, exact=True, no AVX2) it dequantizes every weight
# tile per call, ~200 ms on the 350M file, which decode steps beat below ~24 tokens. The integer
# prefill (AVX2) beats decode from 2 tokens on (8 tokens: 103 against 183 ms), and gives the
# same bits; there only a process's first prompt, if short, runs through decode, because
# loading the prefill kernels from numba's cache costs ~0.25 s once (the first token of
# `lfm2q generate -p "short prompt"`: 1.9 instead of 2.15 s).
SHORT_PROMPT = 20
# "decode" / "prefill" once this process has run one (their kernels are loaded). The first run
# of each loads its numba kernels block by block, which runs LLVM; after each block of those
# first runs LLVM's code pages are handed back (compiler_pages), so they are never resident
# together with all the weights.
_first_run_done: set[str] = set()


@dataclass(frozen=True)
class Layer:
    """One block's weights under their GGUF names (blk.N.<name>)."""
    attn_norm: np.ndarray            # f32[D]
    ffn_norm: np.ndarray             # f32[D]
    # dense feed-forward (every layer of LFM2; the leading layers of LFM2-MoE)
    ffn_gate: Weight | None = None   # [FF, D]
    ffn_up: Weight | None = None     # [FF, D]
    ffn_down: Weight | None = None   # [D, FF]
    # routed experts (LFM2-MoE layers from n_dense_lead on)
    ffn_gate_inp: Weight | None = None      # [E, D] router
    exp_probs_b: np.ndarray | None = None   # f32[E] selection bias
    gate_exps: Experts | None = None        # [E, FFE, D]
    up_exps: Experts | None = None          # [E, FFE, D]
    down_exps: Experts | None = None        # [E, D, FFE]
    # short-conv layers
    in_proj: Weight | None = None    # [3D, D]
    conv: np.ndarray | None = None   # f32[D, L]
    out_proj: Weight | None = None   # [D, D]
    # attention layers
    attn_q: Weight | None = None     # [H*HD, D]
    attn_k: Weight | None = None     # [KVH*HD, D]
    attn_v: Weight | None = None     # [KVH*HD, D]
    attn_output: Weight | None = None  # [D, H*HD]
    attn_q_norm: np.ndarray | None = None  # f32[HD]
    attn_k_norm: np.ndarray | None = None  # f32[HD]


class Weights:
    """Every tensor the forward pass reads, as views of the file.

    exact=False (the default) rounds each matrix's input the way llama.cpp does for its type
    (kernels/actquant.py); exact=True multiplies f32 activations, as transformers would.
    """

    def __init__(self, f: GGUFFile, exact: bool = False, experts_resident: int | None = -1):
        c = f.config
        if experts_resident == -1:  # the default bound (see RESIDENT_PER_USED)
            experts_resident = RESIDENT_PER_USED * c.n_expert_used
        self.exact = exact
        weight = (lambda name: _exact(f.weight(name))) if exact else f.weight
        # expert matrices stay in the map (never packed): a token reads K of E experts' pages
        experts = (lambda name: _exact(f.experts(name))) if exact else f.experts
        self.token_embd = weight("token_embd.weight")                   # [V, D]
        self.output_norm = f.vector(f.final_norm_name)                  # f32[D]
        if not exact:  # every matrix but the embedding table (its rows are looked up)
            weight = _Packer(f).weight
        self.output = self.token_embd if c.tied_embeddings else weight("output.weight")
        self.layers: list[Layer] = []
        for il in range(c.n_layer):
            p = f"blk.{il}."
            common = dict(attn_norm=f.vector(p + "attn_norm.weight"),
                          ffn_norm=f.vector(p + "ffn_norm.weight"))
            if c.is_moe(il):
                common.update(ffn_gate_inp=weight(p + "ffn_gate_inp.weight"),
                              exp_probs_b=np.ascontiguousarray(f.vector(p + "exp_probs_b.bias")),
                              gate_exps=experts(p + "ffn_gate_exps.weight"),
                              up_exps=experts(p + "ffn_up_exps.weight"),
                              down_exps=experts(p + "ffn_down_exps.weight"))
            else:
                common.update(ffn_gate=weight(p + "ffn_gate.weight"),
                              ffn_up=weight(p + "ffn_up.weight"),
                              ffn_down=weight(p + "ffn_down.weight"))
            if c.is_attention(il):
                layer = Layer(**common,
                              attn_q=weight(p + "attn_q.weight"),
                              attn_k=weight(p + "attn_k.weight"),
                              attn_v=weight(p + "attn_v.weight"),
                              attn_output=weight(p + "attn_output.weight"),
                              attn_q_norm=f.vector(p + "attn_q_norm.weight"),
                              attn_k_norm=f.vector(p + "attn_k_norm.weight"))
            else:
                layer = Layer(**common,
                              in_proj=weight(p + "shortconv.in_proj.weight"),
                              conv=np.ascontiguousarray(f.vector(p + "shortconv.conv.weight")),
                              out_proj=weight(p + "shortconv.out_proj.weight"))
            self.layers.append(layer)
        matrices = [self.output] + [m for L in self.layers for _, m in _matrices(L, (Weight, Experts))]
        self.integer_prefill = all(integer_prefill(m.kernel) for m in matrices)  # AVX2 int kernels
        # the matvec kernels these matrices need (the router's too): numba compiles no other
        routers = [L.ffn_gate_inp for L in self.layers if L.ffn_gate_inp is not None]
        self.kinds = kinds_for(m.kernel for m in matrices + routers)
        self.tuner = self._tune() if not exact else None
        self.expert_pages = ExpertPages(f, self.layers, experts_resident) if c.n_expert else None

    def _tune(self, retune: bool = False):
        """Each matrix's kernel variants, measured on this CPU or read from the last
        measurement (lfm2q/tuning.py; retune: measure again): the same bits, the faster form."""
        import numba

        from .tuning import Tuner

        t = Tuner(numba.get_num_threads(), self.kinds, retune=retune)
        def shape(m):
            return m.qtype, m.rows, m.cols, m.kernel

        peers: dict = {}  # matrices of one type, shape and code: decode is timed over all of them
        for L in self.layers:
            for _, m in _matrices(L, Weight):
                peers.setdefault(shape(m), []).append(m.raw)
        self.output = t.apply(self.output, ops=("decode",))
        for i, L in enumerate(self.layers):
            new = {k: t.apply(m, peers=peers[shape(m)]) for k, m in _matrices(L, Weight)}
            self.layers[i] = replace(L, **{k: m for k, m in new.items() if m is not getattr(L, k)})
        t.save()
        return t


def _matrices(L: Layer, kinds) -> list:
    """(name, matrix) of a layer's matrices of these classes, the MoE router left out (F32 by
    llama.cpp's rule and small: neither the prefill path nor the tuner depends on it)."""
    return [(k, m) for k, m in vars(L).items() if isinstance(m, kinds) and k != "ffn_gate_inp"]


# Experts of a layer kept resident by default: twice the experts a token uses. A token reads
# K experts' pages; without a bound, a few hundred tokens of varied text would touch every
# expert and make the whole file resident (28 of 32 experts' bytes are idle at any step).
RESIDENT_PER_USED = 2


class ExpertPages:
    """Bounds the expert pages a process keeps resident: per MoE layer, the `budget` experts
    used most recently stay mapped; older ones' pages are handed back (madvise DONTNEED: they
    stay in the page cache, and a later use faults them back in without reading the disk).
    budget None keeps every expert once touched."""

    def __init__(self, f: GGUFFile, layers: list[Layer], budget: int | None):
        self.reader = f.reader
        self.budget = budget
        self.spans: dict[int, list[tuple[int, int]]] = {}  # layer -> (offset, bytes per expert)
        self.names: dict[int, list[str]] = {}
        self.recent: dict[int, OrderedDict] = {}
        for il, L in enumerate(layers):
            if L.gate_exps is not None:
                tensors = (L.gate_exps, L.up_exps, L.down_exps)
                self.names[il] = [t.name for t in tensors]
                self.spans[il] = [(self.reader.tensors[t.name].offset, t.raw[0].nbytes) for t in tensors]
                self.recent[il] = OrderedDict()

    def used(self, il: int, experts) -> None:
        """Experts of layer il just ran (least used first): release the least recent ones."""
        if self.budget is None:
            return
        recent = self.recent[il]
        for e in experts:
            recent.pop(int(e), None)
            recent[int(e)] = None
        while len(recent) > self.budget:
            e, _ = recent.popitem(last=False)
            for offset, nbytes in self.spans[il]:
                self.reader.release_range(offset + e * nbytes, nbytes)

    def release_all(self) -> None:
        """Hand back every expert page (then only what later steps use becomes resident)."""
        for il, recent in self.recent.items():
            for name in self.names[il]:
                self.reader.release(name)
            recent.clear()


def _exact(w: Weight) -> Weight:
    return replace(w, kernel=w.qtype | EXACT)


class _Packer:
    """Matrices in the layout their fastest kernel reads: Q4_K packed 8 rows at a time where the
    AVX2 or NEON dotprod kernels run, Q4_0 4 rows at a time with NEON dotprod, both in 8-byte
    chunks with i8mm (kernels/repack.py, dispatch.packable and pack), their file pages released;
    others as they are. The packed copies share one buffer in 2 MB pages (hugepages.py)."""

    ALIGN = 64  # each copy starts on a cache line

    def __init__(self, f: GGUFFile):
        self.f = f
        need = 0
        for name, shape in f.expected_tensors().items():
            w = f.weight(name) if len(shape) == 2 and name != "token_embd.weight" else None
            if w is not None and packable(w.kernel, w.rows):
                need += self._aligned(int(np.prod(packed_shape(*w.raw.shape, w.qtype))))
        self.free = hugepages.anonymous(need)

    def _aligned(self, n: int) -> int:
        return -(-n // self.ALIGN) * self.ALIGN

    def weight(self, name: str) -> Weight:
        w = self.f.weight(name)
        if not packable(w.kernel, w.rows):
            return w
        shape = packed_shape(*w.raw.shape, w.qtype)
        n = shape[0] * shape[1]
        out = None  # a matrix not counted in __init__ (none is) would get an array of its own
        if n <= self.free.size:
            out = self.free[:n].reshape(shape)
            self.free = self.free[min(self._aligned(n), self.free.size):]
        code = packed_code(w.kernel)
        out = pack(w.raw, code, out)
        out.flags.writeable = False  # typed as the file's read-only views: one compiled kernel per block, not two
        self.f.release(name)
        return replace(w, raw=out, kernel=code)


def _mm(w: Weight, x: np.ndarray) -> np.ndarray:  # x f32[n, cols] -> f32[n, rows]
    out = np.empty((x.shape[0], w.rows), np.float32)
    matmul(w.raw, w.kernel, x, out)
    return out


class Forward:
    """Runs positions through the network against one `State`, owning the decode buffers."""

    def __init__(self, config: Lfm2Config, weights: Weights, state: State):
        self.c, self.w, self.state = config, weights, state
        c = config
        D, HD, FF = c.n_embd, c.head_dim, c.n_ff
        KVH = max(c.n_head_kv)
        # RoPE frequencies as transformers computes them (float32), angles per position.
        self.inv_freq = (1.0 / (np.float32(c.rope_base) **
                                (np.arange(0, HD, 2, dtype=np.float32) / np.float32(HD)))).astype(np.float32)
        self.eps = np.float32(c.rms_eps)
        self.head64 = True if HD == 64 else None  # blocks.attend: compile one copy of its body
        # Decode buffers, allocated once: the decode loop allocates nothing big.
        self.x = np.empty(D, np.float32)             # residual stream
        self.h = np.empty(D, np.float32)             # normed input of a block
        self.o = np.empty(D, np.float32)             # block output
        self.bcx = np.empty((1, 3 * D), np.float32)
        self.y = np.empty((1, D), np.float32)
        self.q = np.empty((1, c.n_head * HD), np.float32)
        self.k = np.empty((1, KVH * HD), np.float32)
        self.v = np.empty((1, KVH * HD), np.float32)
        self.att = np.empty((1, c.n_head * HD), np.float32)
        self.g = np.empty(FF, np.float32)
        self.u = np.empty(FF, np.float32)
        self.logits = np.empty(c.n_vocab, np.float32)
        self.id_buf = np.empty(1, np.int64)
        # MoE decode buffers: router logits, the K chosen experts and their weights
        self.router = np.empty(max(c.n_expert, 1), np.float32)
        self.sel = np.empty(max(c.n_expert_used, 1), np.int64)
        self.wsel = np.empty(max(c.n_expert_used, 1), np.float32)
        K = max(c.n_expert_used, 1)
        self.ge = np.empty((K, max(c.n_ff_exp, 1)), np.float32)
        self.ue = np.empty((K, max(c.n_ff_exp, 1)), np.float32)
        self.oe = np.empty((K, D), np.float32)
        self.acc = np.empty(D, np.float32)

    # --- decode: one token ------------------------------------------------------------

    def decode(self, token: int) -> np.ndarray:
        """Run one token at position n_past; returns the (reused) logits buffer f32[V]."""
        c, w, s, eps = self.c, self.w, self.state, self.eps
        pos = s.n_past
        x = self.x
        self.id_buf[0] = token
        dequant_rows(w.token_embd.raw, w.token_embd.qtype, self.id_buf, x.reshape(1, -1))
        fresh = "decode" not in _first_run_done
        for il, L in enumerate(w.layers):
            if fresh:
                compiler_pages.release()
            if L.in_proj is not None:
                blocks.shortconv_decode(x, L.attn_norm, eps, L.in_proj.raw, L.in_proj.kernel, L.conv,
                                        s.conv[il], L.out_proj.raw, L.out_proj.kernel,
                                        self.h, self.bcx, self.y, self.o, w.kinds)
            else:
                kvh = c.n_head_kv[il] * c.head_dim
                blocks.attention_decode(x, L.attn_norm, eps, L.attn_q.raw, L.attn_q.kernel,
                                        L.attn_k.raw, L.attn_k.kernel, L.attn_v.raw, L.attn_v.kernel,
                                        L.attn_output.raw, L.attn_output.kernel, L.attn_q_norm,
                                        L.attn_k_norm, c.n_head, s.k[il], s.k_scale[il], s.v[il],
                                        s.v_scale[il], pos,
                                        c.sliding_window, self.inv_freq, self.h, self.q,
                                        self.k[:, :kvh], self.v[:, :kvh], self.att, self.o,
                                        w.kinds, self.head64)
            if L.gate_exps is not None:
                blocks.moe_decode(x, L.ffn_norm, eps, L.ffn_gate_inp.raw, L.ffn_gate_inp.kernel,
                                  L.exp_probs_b, L.gate_exps.raw, L.gate_exps.kernel, L.up_exps.raw,
                                  L.up_exps.kernel, L.down_exps.raw, L.down_exps.kernel,
                                  c.n_expert_used, c.expert_weights_norm, c.expert_weights_scale,
                                  w.exact, self.h, self.router, self.sel, self.wsel, self.ge,
                                  self.ue, self.oe, self.acc, w.kinds)
                w.expert_pages.used(il, self.sel[::-1])
            else:
                blocks.ffn_decode(x, L.ffn_norm, eps, L.ffn_gate.raw, L.ffn_gate.kernel, L.ffn_up.raw,
                                  L.ffn_up.kernel, L.ffn_down.raw, L.ffn_down.kernel, self.h, self.g,
                                  self.u, self.o, w.kinds)
        s.n_past = pos + 1
        blocks.rmsnorm(x, w.output_norm, eps, self.h)
        matvec(w.output.raw, w.output.kernel, self.h, self.logits, w.kinds)
        if fresh:
            compiler_pages.release()
            _first_run_done.add("decode")
        return self.logits

    # --- prefill: a chunk of positions --------------------------------------------------

    def prefill(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run positions n_past.. for ids int64[n]; logits f32[n, V] or of the last one f32[V]."""
        with single_threaded_blas():
            return self._prefill(ids, all_logits)

    def _prefill(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        c, w, s, eps = self.c, self.w, self.state, self.eps
        n, p0 = ids.shape[0], s.n_past
        x = np.empty((n, c.n_embd), np.float32)                      # [n, D]
        dequant_rows(w.token_embd.raw, w.token_embd.qtype, ids, x)
        h = np.empty_like(x)
        fresh = "prefill" not in _first_run_done
        for il, L in enumerate(w.layers):
            if fresh:
                compiler_pages.release()
            blocks.rmsnorm_rows(x, L.attn_norm, eps, h)
            if L.in_proj is not None:
                bcx = _mm(L.in_proj, h)                               # [n, 3D]
                y = np.empty_like(x)
                blocks.shortconv_mix(bcx, L.conv, s.conv[il], y)      # [n, D]
                x += _mm(L.out_proj, y)
            else:
                q, k, v = _mm(L.attn_q, h), _mm(L.attn_k, h), _mm(L.attn_v, h)
                blocks.qkv_to_cache(q, k, v, c.n_head, L.attn_q_norm, L.attn_k_norm, eps, p0,
                                    self.inv_freq, s.k[il], s.k_scale[il], s.v[il], s.v_scale[il])
                att = np.empty_like(q)
                blocks.attend(q, s.k[il], s.k_scale[il], s.v[il], s.v_scale[il], p0,
                              c.sliding_window, att, self.head64)
                x += _mm(L.attn_output, att)
            blocks.rmsnorm_rows(x, L.ffn_norm, eps, h)
            if L.gate_exps is not None:
                self._experts(il, L, h, x)
                continue
            g = _mm(L.ffn_gate, h)                                    # [n, FF]
            blocks.silu_mul_rows(g, _mm(L.ffn_up, h))
            x += _mm(L.ffn_down, g)
        s.n_past = p0 + n
        if fresh:
            compiler_pages.release()
            _first_run_done.add("prefill")
        if all_logits:
            blocks.rmsnorm_rows(x, w.output_norm, eps, h)
            return _mm(w.output, h)                                   # [n, V]
        blocks.rmsnorm(x[-1], w.output_norm, eps, self.h)
        matvec(w.output.raw, w.output.kernel, self.h, self.logits, w.kinds)
        return self.logits

    def _experts(self, il: int, L: Layer, h: np.ndarray, x: np.ndarray) -> None:
        """x f32[n, D] += the routed experts of normed h f32[n, D]: positions grouped by expert,
        each chosen expert run once over all the positions that chose it (its pages read once)."""
        c = self.c
        n, K = h.shape[0], c.n_expert_used
        sel = np.empty((n, K), np.int64)
        wsel = np.empty((n, K), np.float32)
        logits = np.empty((n, c.n_expert), np.float32)
        blocks.router_rows(h, L.ffn_gate_inp.raw, L.ffn_gate_inp.kernel, logits, self.w.kinds)
        blocks.route_rows(logits, L.exp_probs_b, K, c.expert_weights_norm,
                          c.expert_weights_scale, self.w.exact, sel, wsel)
        flat = sel.reshape(-1)                            # slot t*K + j: position t's j-th expert
        order = np.argsort(flat, kind="stable")
        experts, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
        y = np.empty((n * K, c.n_embd), np.float32)       # each slot's expert output
        for e, a, m in zip(experts.tolist(), starts.tolist(), counts.tolist()):
            slots = order[a:a + m]
            xe = h[slots // K]                            # [m, D]
            g = _mm(L.gate_exps.expert(e), xe)            # [m, FFE]
            blocks.silu_mul_rows(g, _mm(L.up_exps.expert(e), xe))
            y[slots] = _mm(L.down_exps.expert(e), g)
        blocks.moe_combine_rows(y.reshape(n, K, c.n_embd), wsel, x)
        self.w.expert_pages.used(il, experts[np.argsort(counts, kind="stable")])


class Session:
    """A sequence being decoded: feed tokens with `eval`, get the next-token logits.

    The state (conv windows, KV cache) persists between calls, so a chat feeds only each
    turn's new tokens.
    """

    def __init__(self, model: "Model"):
        self.model = model
        self.n_ctx = model.n_ctx
        self.state = State(model.config, model.n_ctx, model.kv_cache)
        self._fwd = Forward(model.config, model.weights, self.state)

    @property
    def n_past(self) -> int:
        return self.state.n_past

    def eval(self, ids) -> np.ndarray:
        """Append ids to the sequence; returns the last position's logits, f32[V] (a copy)."""
        ids = self._check(ids)
        if self._by_decode(ids.shape[0]):
            for t in ids:
                logits = self._fwd.decode(int(t))
            return logits.copy()
        for i in range(0, ids.shape[0], PREFILL_CHUNK):
            logits = self._fwd.prefill(ids[i:i + PREFILL_CHUNK], all_logits=False)
        return logits.copy()

    def _by_decode(self, n: int) -> bool:  # see SHORT_PROMPT
        warm = self.model.weights.integer_prefill and "prefill" in _first_run_done
        return n <= 1 or (n <= SHORT_PROMPT and not warm)

    def eval_all(self, ids) -> np.ndarray:
        """Like eval, but returns logits for every fed position, f32[n, V]."""
        ids = self._check(ids)
        return np.concatenate([self._fwd.prefill(ids[i:i + PREFILL_CHUNK], all_logits=True)
                               for i in range(0, ids.shape[0], PREFILL_CHUNK)])

    def reset(self) -> None:
        self.state.reset()

    def snapshot(self) -> Snapshot:
        return self.state.snapshot()

    def restore(self, snap: Snapshot) -> None:
        self.state.restore(snap)

    def _check(self, ids) -> np.ndarray:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.shape[0] == 0:
            raise GenerationError("no tokens to evaluate — the prompt is empty")
        V = self.model.config.n_vocab
        bad = arr[(arr < 0) | (arr >= V)]
        if bad.size:
            raise GenerationError(f"token id {int(bad[0])} is outside the vocabulary (0..{V - 1})")
        if self.state.n_past + arr.shape[0] > self.n_ctx:
            raise GenerationError(f"{self.state.n_past} + {arr.shape[0]} tokens exceed the context of "
                                  f"{self.n_ctx} — start a new session or load with a larger n_ctx")
        return arr
