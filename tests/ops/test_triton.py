"""Triton kernels against the reference: output, final state and every gradient.

On CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) in float32 on tiny shapes against
`naive_recurrent_nha`, and in bf16/fp16 against float32 `chunk_nha` (the interpreter multiplies float32 copies of
half operands); on a GPU the `gpu`-marked grid runs bf16/fp16 at real sizes against float32 `chunk_nha`.
B batch, T time, HQ query heads, H key/value heads, K/V head dims, M slots, w window.
"""
from __future__ import annotations

import functools
import weakref

import pytest
import torch

from nha.ops import chunk_nha, naive_recurrent_nha, recurrent_nha_step
from nha.ops.testing import INPUT_NAMES, make_inputs, random_state, rel_rmse
from nha.ops.triton import common, triton_nha, triton_nha_step
from nha.ops.triton import nha as triton_nha_module
from nha.ops.triton.decode import _launch_decode

STATE_GRADS = ("slot_k", "slot_v", "window_k", "window_v", "window_g", "window_k_win")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    # every kernel output starts as NaN, so an element a kernel forgot to write fails the comparison
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def run_with_grads(fn, x, window, state=None, cu_seqlens=None, grads=True):
    """Output, final state and the gradients of every input and initial-state tensor for a fixed random loss."""
    o, final = fn(x["q"], x["k"], x["v"], x["g"], window, q_win=x["q_win"], k_win=x["k_win"], initial_state=state,
                  output_final_state=True, cu_seqlens=cu_seqlens)
    if not grads:
        return o, final, {}
    gen = torch.Generator().manual_seed(1)
    rnd = lambda t: torch.randn(t.shape, generator=gen).to(t.device)  # noqa: E731
    loss = (o.float() * rnd(o)).sum() + (final.slot_k.float() * rnd(final.slot_k)).sum()
    loss = loss + (final.slot_v.float() * rnd(final.slot_v)).sum()
    loss = loss + (final.window_v.float() * rnd(final.window_v)).sum()
    names = [n for n in INPUT_NAMES if x[n] is not None]  # q_win/k_win are None when the window path shares q/k
    if state is not None:
        names += [f"state.{n}" for n in STATE_GRADS]
    wrt = [x[n] if n in x else getattr(state, n[len("state."):]) for n in names]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return o, final, {n: torch.zeros_like(w) if g is None else g for n, w, g in zip(names, wrt, grads)}


def errors(a, b) -> dict[str, float]:
    """Relative RMS error of every output, state tensor and gradient of `a` against `b`; seen/live must be equal."""
    (oa, fa, ga), (ob, fb, gb) = a, b
    assert torch.equal(fa.seen, fb.seen) and torch.equal(fa.slots_live, fb.slots_live)
    err = {"o": rel_rmse(oa, ob)}
    for name in STATE_GRADS:
        ta, tb = getattr(fa, name), getattr(fb, name)
        assert ta.shape == tb.shape, f"state {name}: {ta.shape} vs {tb.shape}"
        err[name] = rel_rmse(ta, tb)
    assert ga.keys() == gb.keys()
    err.update({f"d{n}": rel_rmse(ga[n], gb[n]) for n in ga})
    return err


# ---- CPU (interpreter) and GPU: float32 against the token loop, tiny shapes --------------------------------------

CASES = [  # (B, T, HQ, H, K, V, M, w, cu_seqlens, seen of an initial state)
    pytest.param(1, 40, 2, 1, 16, 24, 4, 8, None, None, id="gqa-w8"),
    pytest.param(1, 70, 1, 1, 16, 16, 4, 0, None, None, id="gsa-w0-two-chunks"),
    # rows 56.. leave the window after the scan's last step (64): their k/v gradients come from the window path alone
    pytest.param(1, 62, 1, 1, 16, 16, 4, 8, None, None, id="last-rows-never-reach-slots"),
    pytest.param(1, 30, 2, 2, 16, 16, 4, None, None, None, id="unbounded"),
    pytest.param(2, 30, 2, 2, 16, 16, 4, 100, None, None, id="w-beyond-T"),
    pytest.param(1, 30, 2, 2, 16, 16, 0, 5, None, None, id="no-slots"),
    pytest.param(1, 40, 1, 1, 16, 16, 4, 6, [0, 13, 13, 40], None, id="varlen"),
    # T > w but every sequence fits in its window: the slot path runs (decided from shapes) with no live slot
    pytest.param(1, 20, 2, 1, 16, 16, 4, 8, [0, 7, 15, 20], None, id="varlen-within-window"),
    pytest.param(2, 20, 2, 1, 16, 16, 4, 6, None, [3, 20], id="initial-state-gqa"),
    pytest.param(2, 20, 2, 1, 16, 16, 4, None, None, [3, 5], id="unbounded-initial-state"),
    # 40 slots: gentle chunks (in-chunk read-outs of one product each; with M <= 16 every chunk is steep) and, with
    # these gates, two steep ones, whose reverse read-outs take the forward's swapped tensors; GQA, packed documents
    # and an initial state
    pytest.param(1, 140, 2, 1, 16, 16, 40, 6, [0, 75, 75, 140], [2, 0, 9], id="gentle-and-steep-chunks"),
]


def _against_float64(x, w, state=None, cu=None, tol=2e-5):
    """Kernel (float32) errors against the token loop run in float64 on the same values."""
    up = lambda t: t.detach().double().requires_grad_() if t is not None and t.is_floating_point() else t  # noqa: E731
    x64 = {n: up(t) for n, t in x.items()}
    state64 = None if state is None else state.map(up)
    err = errors(run_with_grads(triton_nha, x, w, state, cu), run_with_grads(naive_recurrent_nha, x64, w, state64, cu))
    bad = {k: v for k, v in err.items() if not v <= tol}
    assert not bad, bad


@pytest.mark.parametrize("shared", [False, True], ids=["", "shared-qk"])
@pytest.mark.parametrize("B,T,HQ,H,K,V,M,w,cu,seen", CASES)
def test_matches_reference_fp32(B, T, HQ, H, K, V, M, w, cu, seen, shared):
    # shared: the window path uses q and k themselves (q_win = k_win = None), so their gradients add up inside
    x = make_inputs(B, T, HQ, H, K, V, M, device=DEVICE, gate_scale=3.0, requires_grad=True, seed=0,
                    shared_window_inputs=shared)
    state = None
    if seen is not None:
        state = random_state(len(seen), H, M, K, V, w, seen).map(lambda t: t.to(DEVICE))
        state = state.map(lambda t: t.detach().requires_grad_() if t.is_floating_point() else t)
    _against_float64(x, w, state, None if cu is None else torch.tensor(cu, device=DEVICE))


def test_a_forward_without_gradients_gives_the_same_output():
    x = make_inputs(1, 70, 2, 1, 16, 16, 4, device=DEVICE, requires_grad=True, seed=7)
    o, _ = triton_nha(x["q"], x["k"], x["v"], x["g"], 6)
    with torch.no_grad():
        o_no_grad, _ = triton_nha(x["q"], x["k"], x["v"], x["g"], 6)
    # the same arithmetic in two places: with gradients the merge kernel makes p and a, without them the output
    # read-out does (`WindowMerge`); the interpreter sums in the same order (equal bit for bit), a GPU's layouts may
    # not (float32 rounding)
    tol = 0 if common.INTERPRETER else 1e-6
    torch.testing.assert_close(o.detach(), o_no_grad, rtol=tol, atol=tol)


def test_a_bf16_prefill_keeps_half_write_strengths(monkeypatch):
    # without gradients, bf16 inputs get "bf16" slot products (`slot_chunk.dot_precision`), so the write strengths
    # s = 1 - exp(g) are stored in bf16 (half the bytes every slot kernel reads); with gradients they stay float32
    # (the gate gradient needs them). Gentle and steep chunks (M = 40, steep gates), packed sequences, a window
    from nha.ops.triton import function  # noqa: PLC0415

    dtypes = []

    def spy(*args, **kwargs):
        result = slot_gates(*args, **kwargs)
        dtypes.append(result[0].dtype)
        return result

    slot_gates = function.slot_gates
    monkeypatch.setattr(function, "slot_gates", spy)
    x = make_inputs(1, 140, 2, 1, 16, 16, 40, device=DEVICE, dtype=torch.bfloat16, gate_scale=4.0, seed=3,
                    requires_grad=True)
    cu = torch.tensor([0, 75, 140], device=DEVICE)
    args = (x["q"], x["k"], x["v"], x["g"], 6)
    with torch.no_grad():
        o, _ = triton_nha(*args, cu_seqlens=cu)
        ref, _ = chunk_nha(*(t.float() for t in args[:4]), 6, cu_seqlens=cu)
    triton_nha(*args, cu_seqlens=cu)
    assert dtypes == [torch.bfloat16, torch.float32] and o.dtype == torch.bfloat16
    # the GPU tests' bf16 tolerance, twice over under the interpreter, whose bf16 conversions truncate (a bias the
    # GPU's round-to-nearest does not have: ~6e-3 here)
    assert rel_rmse(o, ref) < (1e-2 if common.INTERPRETER else 5e-3)


@pytest.mark.parametrize("M,gate_scale", [(4, 3.0), (40, 4.0)], ids=["steep", "mixed"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_recomputed_states_give_the_same_gradients(packed, M, gate_scale):
    # save_states=False recomputes both scans' chunk-start states, in-chunk tensors, gates and slot probabilities in
    # the backward: every output, state and gradient must equal the saved-state run's bit for bit (two chunks, GQA,
    # an initial state; packed: three documents, one empty, whose gates the recomputation masks per document; with 4
    # slots every chunk is steep, with 40 and these gates some are gentle)
    B, T, cu, seen = (1, 140, torch.tensor([0, 70, 70, 140], dtype=torch.int32), [3, 0, 20]) if packed else \
        (2, 70, None, [3, 20])
    x = make_inputs(B, T, 2, 1, 16, 16, M, device=DEVICE, gate_scale=gate_scale, requires_grad=True, seed=2)
    state = random_state(len(seen), 1, M, 16, 16, 6, seen).map(lambda t: t.to(DEVICE))
    state = state.map(lambda t: t.detach().requires_grad_() if t.is_floating_point() else t)
    cu = None if cu is None else cu.to(DEVICE)
    recompute = functools.partial(triton_nha, save_states=False)
    (oa, fa, ga), (ob, fb, gb) = run_with_grads(triton_nha, x, 6, state, cu), run_with_grads(recompute, x, 6, state, cu)
    assert torch.equal(oa, ob) and all(torch.equal(a, b) for a, b in zip(fa.tensors(), fb.tensors()))
    assert ga.keys() == gb.keys() and all(torch.equal(ga[n], gb[n]) for n in ga), "gradients differ"


def test_recomputing_mode_saves_only_the_logits_of_the_slot_path():
    # save_states=False (the low-memory mode) keeps, of the per-token per-slot float32 tensors, only the slot logits z:
    # the scan's write strengths and chunk cumsums, the slot probabilities and the in-chunk tensors are recomputed in
    # the backward. The scan's gates themselves are never saved: the backward makes them from the layer's
    x = make_inputs(1, 140, 4, 2, 16, 16, 8, device=DEVICE, requires_grad=True, seed=4)

    def saved(save_states):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append((t.dtype, t.shape)) or t, lambda t: t):
            triton_nha(x["q"], x["k"], x["v"], x["g"], 6, save_states=save_states)
        per_slot = sum(dt == torch.float32 and len(sh) == 4 and sh[2] == 4 and sh[3] == 8 for dt, sh in shapes)
        return per_slot, sum(sh.numel() * dt.itemsize for dt, sh in shapes)

    (kept, full), (kept_low, low) = saved(True), saved(False)
    assert kept == 4 and kept_low == 1  # s_in, gc, z, p -> z
    assert full - low >= 3 * 140 * 4 * 8 * 4  # at least those three tensors' bytes (the states and weights besides)


def test_window_transients_are_freed_before_the_reverse_scans(monkeypatch):
    # the backward's memory peaks in the reverse scans: the window path's float32 dq (added into dq by then) and
    # its input do_win must be gone when they start (each [N, T, HQ, D], 512 / 256 MiB at 64k tokens x 16 heads)
    from nha.ops.triton import function

    watched, alive = {}, []

    def watch(name, fn, pick):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            watched[name] = weakref.ref(pick(out))
            return out
        monkeypatch.setattr(function, fn.__name__, wrapper)

    watch("do_win", function.merge_backward, lambda out: out[2])
    watch("dq_w", function.window_backward, lambda out: out[0])
    reverse_scans = function.reverse_scans

    def checking(*args, **kwargs):
        alive.extend(name for name, ref in watched.items() if ref() is not None)
        return reverse_scans(*args, **kwargs)

    monkeypatch.setattr(function, "reverse_scans", checking)
    x = make_inputs(1, 70, 2, 1, 16, 16, 4, device=DEVICE, requires_grad=True, seed=6, shared_window_inputs=True)
    o, _ = triton_nha(x["q"], x["k"], x["v"], x["g"], 6)
    o.sum().backward()
    assert set(watched) == {"do_win", "dq_w"} and alive == []


def test_steep_gates_stay_finite():
    # decays far below exp(-88) inside one chunk: every exp() factor in the kernels must stay <= 1
    x = make_inputs(1, 70, 1, 1, 16, 16, 4, device=DEVICE, requires_grad=True, seed=3)
    with torch.no_grad():
        x["g"].copy_(-30.0 * torch.rand_like(x["g"]))
    # dg cancels heavily here: chunk_nha in float32 is off by 5e-5 from float64 on these inputs, the kernels by 3e-5
    _against_float64(x, 3, tol=1e-4)


@pytest.mark.parametrize("w,seen", [(5, [2, 9]), (0, [0, 3]), (None, [3, 7])])
def test_decode_step_matches_recurrent(w, seen):
    B, HQ, H, K, V, M = 2, 4, 2, 16, 24, 4
    state = random_state(B, H, M, K, V, w, seen).map(lambda t: t.to(DEVICE))
    ref = state
    for step in range(3):
        x = make_inputs(B, 1, HQ, H, K, V, M, device=DEVICE, seed=step)
        args = (x["q"], x["k"], x["v"], x["g"], w)
        before = state.map(torch.clone)
        o, new_state = triton_nha_step(*args, state, q_win=x["q_win"], k_win=x["k_win"])
        assert all(torch.equal(a, b) for a, b in zip(state.tensors(), before.tensors())), "input state changed"
        state = new_state
        ro, ref = recurrent_nha_step(*args, ref, q_win=x["q_win"], k_win=x["k_win"])
        assert rel_rmse(o, ro) <= 1e-5
        assert torch.equal(state.seen, ref.seen) and torch.equal(state.slots_live, ref.slots_live)
        for a, b in zip(state.tensors()[:6], ref.tensors()[:6]):
            assert rel_rmse(a, b) <= 1e-5


def test_bad_input_is_a_value_error():
    x = make_inputs(1, 8, 2, 2, 16, 16, 4, device=DEVICE)
    with pytest.raises(ValueError, match="log forget gates"):
        triton_nha(x["q"], x["k"], x["v"], x["g"].abs() + 0.1, 4)
    with pytest.raises(ValueError, match="T == 1"):
        state = random_state(1, 2, 4, 16, 16, 4, [0]).map(lambda t: t.to(DEVICE))
        triton_nha_step(x["q"], x["k"], x["v"], x["g"], 4, state)


# ---- GPU: bf16 / fp16 grid against float32 chunk_nha ---------------------------------------------------------------

TOLERANCE = {torch.bfloat16: 5e-3, torch.float16: 2e-3}


def _half_case(B, T, HQ, H, K, V, M, w, dtype, *, cu=None, seen=None, grads=True, seed=0, shared=False):
    """Errors of the kernels in `dtype` against float32 `chunk_nha` on the same (rounded) inputs, and the error of
    `chunk_nha` itself run on `dtype` inputs (the PyTorch code in half precision: STYLE.md's 2x rule)."""
    x = make_inputs(B, T, HQ, H, K, V, M, device="cuda", dtype=dtype, seed=seed, requires_grad=grads,
                    shared_window_inputs=shared)
    x32 = {n: None if t is None else t.detach().float().requires_grad_(grads) for n, t in x.items()}
    state = state32 = None
    if seen is not None:
        state = random_state(len(seen), H, M, K, V, w, seen, dtype=dtype).map(lambda t: t.cuda())
        state = state.map(lambda t: t.detach().requires_grad_(grads) if t.is_floating_point() else t)
        state32 = state.map(lambda t: t.detach().float().requires_grad_(grads) if t.is_floating_point() else t)
    cu = None if cu is None else torch.tensor(cu, device="cuda")
    ref = run_with_grads(chunk_nha, x32, w, state32, cu, grads)
    if grads:
        kernels = errors(run_with_grads(triton_nha, x, w, state, cu), ref)
        return kernels, errors(run_with_grads(chunk_nha, x, w, state, cu), ref)
    o, _, _ = run_with_grads(triton_nha, x, w, state, cu, grads)
    o_half, _, _ = run_with_grads(chunk_nha, x, w, state, cu, grads)
    return {"o": rel_rmse(o, ref[0])}, {"o": rel_rmse(o_half, ref[0])}


def _check(kernel, half, dtype, floor: float = 1):
    # per tensor: twice the error of chunk_nha on the same half inputs (its outputs and gradients are rounded to the
    # half dtype too), or the flat bf16/fp16 tolerance (times `floor`), whichever is larger
    limit = {k: max(2 * half[k], floor * TOLERANCE[dtype]) for k in kernel}
    bad = {k: (v, limit[k]) for k, v in kernel.items() if not v <= limit[k]}
    worst = max(kernel, key=lambda k: kernel[k] / limit[k])
    print(f"worst {kernel[worst]:.2e} ({worst}, limit {limit[worst]:.1e}, chunk_nha in half {half[worst]:.1e})")
    assert not bad, bad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,T,HQ,H,K,V,M,w,cu,seen", [
    pytest.param(1, 140, 2, 1, 16, 16, 40, 6, [0, 75, 140], None, id="gentle-and-steep-packed-gqa"),
    pytest.param(2, 70, 2, 2, 16, 24, 4, 8, None, [3, 20], id="initial-state"),
])
def test_half_inputs_match_float32(B, T, HQ, H, K, V, M, w, cu, seen, dtype):
    # the GPU grid's check (`_check`) at tiny shapes, on CPU too: bf16/fp16 inputs through the training path (the
    # merge kernel, the half window output scaled in the read-out, every gradient) against float32 chunk_nha on the
    # same values. Under the interpreter products run on float32 copies, and its bf16 conversions truncate instead
    # of rounding to nearest (a bias the GPU does not have: bf16 errors up to ~7e-3 here), so bf16's flat limit doubles
    x = make_inputs(B, T, HQ, H, K, V, M, device=DEVICE, dtype=dtype, seed=0, requires_grad=True, gate_scale=3.0)
    x32 = {n: None if t is None else t.detach().float().requires_grad_() for n, t in x.items()}
    state = state32 = None
    if seen is not None:
        state = random_state(len(seen), H, M, K, V, w, seen, dtype=dtype).map(lambda t: t.to(DEVICE))
        state = state.map(lambda t: t.detach().requires_grad_() if t.is_floating_point() else t)
        state32 = state.map(lambda t: t.detach().float().requires_grad_() if t.is_floating_point() else t)
    cu = None if cu is None else torch.tensor(cu, device=DEVICE)
    ref = run_with_grads(chunk_nha, x32, w, state32, cu)
    kernel = errors(run_with_grads(triton_nha, x, w, state, cu), ref)
    half = errors(run_with_grads(chunk_nha, x, w, state, cu), ref)
    _check(kernel, half, dtype, floor=2 if common.INTERPRETER and dtype == torch.bfloat16 else 1)


GPU_GRID = [  # (K, V, M, w, T)
    (64, 64, 16, 0, 2048), (128, 128, 64, 64, 2048), (256, 256, 128, 100, 1000), (128, 64, 64, 1, 777),
    (64, 128, 16, 512, 3000), (128, 128, 64, None, 2048), (64, 64, 128, 4096, 5000), (128, 256, 64, 64, 1500),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("K,V,M,w,T", GPU_GRID)
def test_gpu_grid(K, V, M, w, T, dtype):
    _check(*_half_case(2, T, 4, 2, K, V, M, w, dtype), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_varlen_and_state(dtype):
    _check(*_half_case(1, 3000, 4, 1, 128, 128, 64, 100, dtype, cu=[0, 1000, 1001, 2500, 3000]), dtype)
    _check(*_half_case(2, 700, 4, 2, 128, 128, 64, 64, dtype, seen=[10, 500]), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_shared_window_inputs(dtype):
    # the window path on q and k themselves (the benchmark's configuration), with GQA and an initial state
    _check(*_half_case(2, 4096, 4, 4, 128, 128, 64, 64, dtype, shared=True), dtype)
    _check(*_half_case(2, 700, 4, 2, 128, 128, 64, 64, dtype, seen=[10, 500], shared=True), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("w", [64, 4096, None])
def test_gpu_long_forward(w):
    T = 65536 if w is not None else 16384
    _check(*_half_case(1, T, 2, 2, 128, 128, 64, w, torch.bfloat16, grads=False), torch.bfloat16)


@pytest.mark.parametrize("w", [64, None])
@pytest.mark.parametrize("packed", [False, True])
def test_the_operators_glue_reads_no_device_value(w, packed, monkeypatch):
    # everything triton_nha does around its kernels (checks, layout, packing back) on meta tensors, which hold no
    # values: reading one back (what syncs the host with a GPU) raises. The kernels' Function is replaced by one that
    # only shapes its output; the offsets of packed documents come on the CPU, as the model passes them.
    def shapes_only(q, k, v, g, q_win, k_win, h0_k, h0_v, plan):
        return q.new_empty(*q.shape[:3], v.shape[-1]), None, None

    monkeypatch.setattr(triton_nha_module.NHAFunction, "apply", shapes_only)
    B, T, cu = (1, 300, torch.tensor([0, 100, 100, 300], dtype=torch.int32)) if packed else (2, 300, None)
    q, k = torch.empty(B, T, 4, 16, device="meta"), torch.empty(B, T, 2, 16, device="meta")
    g = torch.empty(B, T, 2, 8, device="meta")
    o, _ = triton_nha(q, k, k, g, w, check_gates=False, cu_seqlens=cu)
    assert o.shape == (B, T, 4, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("w", [64, None])
@pytest.mark.parametrize("packed", [False, True])
def test_gpu_training_call_makes_no_host_sync(w, packed):
    # a layer's training call (no gate check; packed documents with their offsets on the CPU, as the model passes
    # them) must let the host run ahead of the GPU: a sync per layer would leave the GPU idle while the next layer's
    # launches are prepared. Warm (compiled) first, then any synchronizing operation in forward or backward is an error.
    x = make_inputs(1 if packed else 2, 300, 4, 2, 64, 64, 16, device="cuda", dtype=torch.bfloat16,
                    requires_grad=True, seed=5, shared_window_inputs=True)
    cu = torch.tensor([0, 100, 100, 300], dtype=torch.int32) if packed else None
    run = lambda: triton_nha(x["q"], x["k"], x["v"], x["g"], w, check_gates=False,  # noqa: E731
                             cu_seqlens=cu)[0].float().square().sum()
    run().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


class _CountingKernel:
    """A kernel stand-in that counts the launches going through Triton's own launch (`kernel[grid](...)`)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.gpu
@pytest.mark.parametrize("w", [64, 0, None])
def test_gpu_decode(w, monkeypatch):
    counter = _CountingKernel(_launch_decode.kernel)
    monkeypatch.setattr(_launch_decode, "kernel", counter)
    monkeypatch.setattr(_launch_decode, "binaries", {})
    B, HQ, H, K, V, M = 3, 8, 2, 128, 128, 64
    state = random_state(B, H, M, K, V, w, [5, 64, 300], dtype=torch.bfloat16).map(lambda t: t.cuda())
    ref = state.map(lambda t: t.float() if t.is_floating_point() else t)
    for step in range(3):
        x = make_inputs(B, 1, HQ, H, K, V, M, device="cuda", dtype=torch.bfloat16, seed=step)
        o, state = triton_nha_step(x["q"], x["k"], x["v"], x["g"], w, state, q_win=x["q_win"], k_win=x["k_win"])
        x32 = {n: t.float() for n, t in x.items()}
        ro, ref = recurrent_nha_step(x32["q"], x32["k"], x32["v"], x32["g"], w, ref, q_win=x32["q_win"],
                                     k_win=x32["k_win"])
        assert rel_rmse(o, ro) <= 5e-3
        assert rel_rmse(state.slot_k, ref.slot_k) <= 1e-4 and rel_rmse(state.slot_v, ref.slot_v) <= 1e-4
        assert torch.equal(state.seen, ref.seen) and torch.equal(state.slots_live, ref.slots_live)
        for a, b in zip(state.tensors()[2:6], ref.tensors()[2:6]):  # the ring buffers are copies: exact
            assert torch.equal(a.float(), b)
    assert counter.launches == 1, "steps 2 and 3 should have launched the first step's binary"
    # a query 2 bytes off 16-byte alignment goes through Triton's own launch (the kept binary assumes alignment)
    q_off = torch.empty(x["q"].numel() + 1, dtype=x["q"].dtype, device="cuda")[1:].view_as(x["q"]).copy_(x["q"])
    assert q_off.data_ptr() % 16 != 0
    args = (x["k"], x["v"], x["g"], w, state)
    o_off, _ = triton_nha_step(q_off, *args, q_win=x["q_win"], k_win=x["k_win"])
    assert counter.launches == 2
    o, _ = triton_nha_step(x["q"], *args, q_win=x["q_win"], k_win=x["k_win"])
    assert counter.launches == 2 and torch.equal(o_off, o)
