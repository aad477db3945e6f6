"""The fused sampling kernel (engines/fast_t3/sample_kernel.py) against sampling.py's PyTorch reference, on the CPU
through Triton's interpreter: one decode step's token for many inputs and settings (with the same noise row, the same
token), ties at the top-k and top-p boundaries, the state update (out, tok, seen, pos, step), and 1,200 draws at
upstream's defaults against torch.multinomial. Also the QKV matrix-vector kernel's write into the KV cache
(kernels.gemv(kv=...)) and the decode attention (attention.py), which the same interpreter runs.

The interpreter has to be switched on before Triton is imported, so the checks run in fresh interpreters of this
file (two at once: ~2 minutes on 2 idle cores) with TRITON_INTERPRET=1 and Triton from $CBX_TRITON_INTERP, else from
build/triton-interp. Every input comes from fixed seeds: the verdicts are the same every run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional import optional_import, requires

ROOT = Path(__file__).resolve().parents[1]
TRITON = Path(os.environ.get("CBX_TRITON_INTERP") or ROOT / "build" / "triton-interp")
pytestmark = [requires("torch"), pytest.mark.skipif(
    not (TRITON / "triton" / "__init__.py").is_file(),
    reason=f"needs Triton in {TRITON} for its CPU interpreter: run `{sys.executable} -m pip install --target "
           f"{ROOT / 'build' / 'triton-interp'} triton` (or set CBX_TRITON_INTERP to a folder holding triton)")]
torch = optional_import("torch")

CASES = 100                  # random inputs and settings, each drawn and run greedy
DRAWS, SPLIT = 1200, 450     # draws at the defaults: the first SPLIT in the worker that also runs the cases
TIMEOUT_S = 600
V_BIG, V_SMALL = 6563, 97    # Turbo's speech vocabulary, and a small odd one
TEMPERATURES = (0.5, 0.8, 1.0, 1.3)
TOP_KS = (1, 5, 50, 1000, "V", 10000)
TOP_PS = (0.0, 0.5, 0.95, 1.0)
MIN_PS = (0.0, 0.05, 0.3)
PENALTIES = (1.0, 1.2, 2.0)


# ---- the worker: runs in a fresh interpreter (python this_file.py JOB), prints one JSON line ----

def _modules():
    """sampling.py and sample_kernel.py."""
    from ros2_chatterbox.engines.fast_t3 import sample_kernel, sampling
    return sampling, sample_kernel


def _whole_groups(S, logits, seen, params):
    """sampling.process with the kernel's top-p tie rule (its docstring): a group of equal values drops whole, when
    the cumulative sum at its last member is <= 1 - top_p, never in part. Elsewhere the reference's own ops."""
    V = logits.shape[-1]
    p = lambda i: params[:, i:i + 1]  # noqa: E731
    scores = logits.float() / p(S.TEMP)
    srt, _ = torch.sort(scores, dim=-1)
    thr = srt.gather(1, (V - p(S.TOPK)).long())
    scores = scores.masked_fill(scores < thr, S.NEG_INF)
    srt = srt.masked_fill(srt < thr, S.NEG_INF)
    cum = srt.softmax(dim=-1).cumsum(dim=-1)
    last = torch.searchsorted(srt, scores, right=True) - 1  # where each token's group ends in the ascending order
    drop = (cum.gather(1, last) <= p(S.TOPP_CUT)) & (p(S.TOPP_ON) > 0) & (scores < scores.amax(-1, keepdim=True))
    scores = scores.masked_fill(drop, S.NEG_INF)
    probs = scores.softmax(dim=-1)
    scores = scores.masked_fill(probs < p(S.MINP) * probs.amax(dim=-1, keepdim=True), S.NEG_INF)
    return S.penalise(scores, seen, p(S.PENALTY))


def _step(K, logits, params, seen, noise, step, greedy, pos=3, T=6):
    """One kernel step on fresh state; (token, what the state update got wrong)."""
    seen_after = seen.clone()
    out = torch.full((T,), -1, dtype=torch.long)
    tok, pos_t, step_t = (torch.tensor([v], dtype=torch.long) for v in (-1, pos, step))
    K.sample_step(logits, params, seen_after, noise, out, tok, pos_t, step_t, greedy)
    t = int(tok[0])
    want_out = torch.full((T,), -1, dtype=torch.long)
    if step < T:  # a step past `out` is not stored
        want_out[step] = t
    want_seen = seen.clone()
    if 0 <= t < seen.shape[-1]:
        want_seen[0, t] = True
    wrong = [name for name, ok in (("out", torch.equal(out, want_out)), ("seen", torch.equal(seen_after, want_seen)),
                                   ("pos", int(pos_t[0]) == pos + 1), ("step", int(step_t[0]) == step + 1)) if not ok]
    return t, wrong


def _cases(S, K):
    import numpy as np
    rs, g = np.random.RandomState(1), torch.Generator().manual_seed(1)
    rows, n = [], 3
    for i in range(CASES):
        V = V_SMALL if i % 3 == 2 else V_BIG
        dtype = (torch.float32, torch.float16, torch.float32, torch.bfloat16)[i % 4]
        logits = (torch.randn(1, V, generator=g) * 3).to(dtype)
        seen = torch.rand(1, V, generator=g) < float(rs.choice([0.0, 0.05, 0.3]))
        top_k = rs.choice(TOP_KS)
        s = S.coerce(None, temperature=float(rs.choice(TEMPERATURES)), top_k=V if top_k == "V" else int(top_k),
                     top_p=float(rs.choice(TOP_PS)), min_p=float(rs.choice(MIN_PS)),
                     repetition_penalty=float(rs.choice(PENALTIES)))
        params = S.params_tensor(s, V)
        noise = torch.empty(n, V).exponential_(generator=g)
        step = int(rs.randint(0, 8))  # past out's 6 slots, and past the 3 noise rows
        row = noise[step % n].view(1, V)
        ref = int(S.draw(S.process(logits, seen, params), row))
        whole = int(S.draw(_whole_groups(S, logits, seen, params), row))
        got, wrong = _step(K, logits, params, seen, noise, step, False)
        greedy, wrong_greedy = _step(K, logits, params, seen, noise, step, True)
        rows.append(dict(case=i, V=V, dtype=str(dtype), settings=str(s), step=step, ref=ref, whole=whole, got=got,
                         argmax=int(torch.argmax(logits)), greedy=greedy, wrong=wrong + wrong_greedy))
    return rows


def _ties(S, K):
    """Values from a few levels (thousands of exact ties): top-k with ties at the k-th value, top-p with ties at the
    boundary; and the documented top-p difference on a group built to straddle the boundary."""
    g = torch.Generator().manual_seed(2)
    rows = []
    for i, (top_k, top_p, pen) in enumerate([(5, 1.0, 1.0), (50, 1.0, 1.2), (1000, 1.0, 2.0), (1, 1.0, 1.0),
                                             (50, 0.9, 1.0), (1000, 0.5, 1.2), (V_BIG, 0.95, 1.0)]):
        logits = torch.randint(-8, 8, (1, V_BIG), generator=g).to(torch.float16) / 2
        seen = torch.rand(1, V_BIG, generator=g) < 0.1
        params = S.params_tensor(S.coerce(None, temperature=0.8, top_k=top_k, top_p=top_p, min_p=0.0,
                                          repetition_penalty=pen), V_BIG)
        noise = torch.empty(4, V_BIG).exponential_(generator=g)
        for step in range(4):
            row = noise[step].view(1, V_BIG)
            got, wrong = _step(K, logits, params, seen, noise, step, False)
            rows.append(dict(case=i, top_k=top_k, top_p=top_p, step=step, got=got, wrong=wrong,
                             ref=int(S.draw(S.process(logits, seen, params), row)),
                             whole=int(S.draw(_whole_groups(S, logits, seen, params), row))))
    # 4.0 once, 2.0 ten times (p = 0.0575 each), -30 elsewhere; top_p 0.8: the reference drops the 3 of the ten that
    # its sort puts first (cumulative sums 0.057, 0.115, 0.172 <= 0.2), the kernel keeps all ten
    logits = torch.full((1, V_SMALL), -30.0)
    logits[0, 0], logits[0, 10:20] = 4.0, 2.0
    seen = torch.zeros(1, V_SMALL, dtype=torch.bool)
    params = S.params_tensor(S.coerce(None, temperature=1.0, top_k=0, top_p=0.8, min_p=0.0,
                                      repetition_penalty=1.0), V_SMALL)
    straddle = []
    for j in range(10, 20):  # noise that picks token j whenever j is kept
        noise = torch.ones(1, V_SMALL)
        noise[0, j] = 1e-30
        got, wrong = _step(K, logits, params, seen, noise, 0, False)
        straddle.append(dict(token=j, got=got, ref=int(S.draw(S.process(logits, seen, params), noise)), wrong=wrong))
    return rows, straddle


def _defaults(S):
    """The distribution check's fixed input: random logits, 5% of the tokens seen, upstream's default settings."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, V_BIG, generator=g) * 3
    seen = torch.rand(1, V_BIG, generator=g) < 0.05
    s = S.coerce(None, temperature=0.8, top_k=1000, top_p=0.95, min_p=0.0, repetition_penalty=1.2)
    return logits, seen, S.params_tensor(s, V_BIG)


def _draws(S, K, start, stop):
    """Draws start..stop at the defaults, each with its own fresh Exp(1) noise (seeded by its index)."""
    import numpy as np
    logits, seen, params = _defaults(S)
    processed = S.process(logits, seen, params)
    tokens, differ = [], []
    for i in range(start, stop):
        row = np.random.RandomState([4, i]).standard_exponential(V_BIG).astype(np.float32)
        noise = torch.from_numpy(np.maximum(row, np.float32(1e-30))).view(1, V_BIG)
        got, wrong = _step(K, logits, params, seen, noise, 0, False)
        ref = int(S.draw(processed, noise))
        tokens.append(got)
        if got != ref or wrong:
            differ.append(dict(draw=i, got=got, ref=ref, wrong=wrong))
    return tokens, differ


def _refusals(S, K):
    """Which malformed calls sample_step refuses (ValueError) before launching anything."""
    V = V_SMALL
    good = dict(logits=torch.zeros(1, V), params=S.params_tensor(S.coerce(None), V),
                seen=torch.zeros(1, V, dtype=torch.bool), noise=torch.ones(2, V), out=torch.zeros(4, dtype=torch.long),
                tok=torch.zeros(1, dtype=torch.long), pos=torch.zeros(1, dtype=torch.long),
                step=torch.zeros(1, dtype=torch.long))
    bad = dict(params=torch.zeros(1, S.N_PARAMS, dtype=torch.float64), seen=torch.zeros(1, V, dtype=torch.uint8),
               noise=torch.ones(2, V + 1), out=torch.zeros(4, dtype=torch.int32), step=torch.zeros(2, dtype=torch.long),
               logits=torch.zeros(1, V, 2)[..., 0])
    refused = {}
    for name, value in bad.items():
        try:
            K.sample_step(**dict(good, **{name: value}), greedy=False)
            refused[name] = False
        except ValueError:
            refused[name] = True
    return refused


def _kv_write():
    """kernels.gemv(kv=(cache, pos)), the decode step's QKV product: rows K..3K-1 land in the cache at pos, as the
    PyTorch path's index_copy_ puts them; the product itself is unchanged. Turbo's and Nano's head layouts, tiny."""
    from ros2_chatterbox.engines.fast_t3 import kernels
    g = torch.Generator().manual_seed(3)
    out = []
    for D, H, positions in ((64, 4, 40), (96, 3, 33)):
        x, w = torch.randn(1, D, generator=g), torch.randn(3 * D, D, generator=g) / D ** 0.5
        b = 0.1 * torch.randn(3 * D, generator=g)
        cache, pos = torch.zeros(2, H, positions, D // H), torch.tensor([positions - 7])
        y = kernels.gemv(x, w, b, kv=(cache, pos))
        want = torch.zeros_like(cache)
        want.index_copy_(2, pos, y[:, D:].view(2, H, 1, D // H))
        plain = kernels.gemv(x, w, b)
        out.append({"D": D, "cache_equal": bool(torch.equal(cache, want)), "y_equal": bool(torch.equal(y, plain))})
    return out


def _attention():
    """attention.decode_attention against scaled_dot_product_attention with the step's mask (positions after pos
    out), for positions at the start, inside and at the end of a bucket, and a bucket of several splits."""
    import math
    import torch.nn.functional as F
    from ros2_chatterbox.engines.fast_t3 import attention
    g = torch.Generator().manual_seed(4)
    out = []
    for H, Dh, P, n, pos in ((4, 16, 200, 64, 0), (4, 16, 200, 64, 37), (4, 16, 200, 64, 63), (3, 32, 300, 192, 150)):
        cache = torch.randn(2, H, P, Dh, generator=g)
        q = torch.randn(1, H * Dh, generator=g)
        got = attention.decode_attention(q, cache, torch.tensor([pos]), n)
        mask = torch.zeros(1, 1, 1, n).masked_fill_((torch.arange(n) > pos).view(1, 1, 1, n), float("-inf"))
        ref = F.scaled_dot_product_attention(q.view(1, H, 1, Dh), cache[0:1, :, :n], cache[1:2, :, :n],
                                             attn_mask=mask).reshape(1, H * Dh)
        out.append({"pos": pos, "n": n, "err": float((got - ref).abs().max()), "splits": math.ceil(n / 64)})
    return out


def _tuning_agrees():
    """tuning._sampler_agrees as pick_kernels calls it at configure: the defaults' parameter row (set_sampling()),
    then four draws of the kernel against the reference on a Turbo-sized vocabulary."""
    from types import SimpleNamespace
    from ros2_chatterbox.engines.fast_t3 import tuning
    from ros2_chatterbox.engines.fast_t3.state import DecodeState
    with torch.inference_mode():  # as at configure
        st = DecodeState(1, 1, 4, V_BIG, 8, 16, 4, "cpu", torch.float32)
        st.set_sampling()
        return tuning._sampler_agrees(SimpleNamespace(state=st, device=torch.device("cpu")))


def _worker(job):
    torch.set_num_threads(1)  # two workers on two cores
    S, K = _modules()
    assert K.available()
    result = {}
    if job["cases"]:
        result["cases"] = _cases(S, K)
        result["ties"], result["straddle"] = _ties(S, K)
        result["refused"] = _refusals(S, K)
        result["kv_write"] = _kv_write()
        result["attention"] = _attention()
    else:
        result["tuning_agrees"] = _tuning_agrees()
        logits, seen, params = _defaults(S)
        p = S.process(logits, seen, params).softmax(-1)[0]
        result["p"] = p.tolist()
        result["multinomial"] = torch.multinomial(p, DRAWS, replacement=True,
                                                  generator=torch.Generator().manual_seed(6)).tolist()
    result["draws"], result["draws_differ"] = _draws(S, K, *job["draws"])
    print(json.dumps(result))


# ---- the tests: one run of both workers, shared ----

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample_kernel")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(TRITON), str(ROOT)]))
    jobs = [{"cases": True, "draws": [0, SPLIT]}, {"cases": False, "draws": [SPLIT, DRAWS]}]
    procs = []
    try:
        for i, job in enumerate(jobs):
            with open(folder / f"{i}.out", "w") as out, open(folder / f"{i}.err", "w") as err:
                procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), json.dumps(job)],
                                              cwd=str(ROOT), env=env, stdout=out, stderr=err))
        merged = {"draws": [], "draws_differ": []}
        for i, proc in enumerate(procs):
            code = proc.wait(timeout=TIMEOUT_S)
            assert code == 0, f"worker {jobs[i]} failed:\n{(folder / f'{i}.err').read_text()[-4000:]}"
            part = json.loads((folder / f"{i}.out").read_text().strip().splitlines()[-1])
            for key in ("draws", "draws_differ"):
                merged[key] += part.pop(key)
            merged.update(part)
        return merged
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_tokens_equal_the_reference(results):
    """Same inputs, same noise row: the kernel's token is sampling.draw(sampling.process(...)) for every case (the
    whole-group tie rule's token where a top-p tie group straddles the boundary, which half-precision logits make
    common), and for every one of the draws at the defaults."""
    rows = results["cases"]
    assert len(rows) == CASES
    assert [r for r in rows if r["got"] != r["whole"]] == []
    straddled = [r for r in rows if r["ref"] != r["whole"]]
    assert all(r["dtype"] != "torch.float32" for r in straddled), straddled  # float32 logits have no ties here
    assert results["draws_differ"] == []
    assert len(results["draws"]) == DRAWS


def test_greedy_is_the_first_argmax(results):
    assert [r for r in results["cases"] if r["greedy"] != r["argmax"]] == []


def test_state_update(results):
    """out[step] (when step < len(out)), tok, seen[t], pos + 1, step + 1, greedy or not; step % N picks the noise
    row (the steps run past the 3 rows, and the tokens equal the reference's with that row)."""
    rows = results["cases"] + results["ties"] + results["straddle"]
    assert [r for r in rows if r["wrong"]] == []
    steps = {r["step"] for r in results["cases"]}
    assert {0, 1, 2, 3, 4, 5, 6, 7} <= steps


def test_top_k_keeps_ties_with_the_kth_value(results):
    rows = [r for r in results["ties"] if r["top_p"] == 1.0]
    assert len(rows) == 16
    assert [r for r in rows if r["got"] != r["ref"]] == []


def test_top_p_ties_at_the_boundary_stay_whole(results):
    """The documented difference: the reference drops part of an equal group at the top-p boundary (the part its
    sort puts first), the kernel keeps the whole group; apart from that group, the same tokens."""
    rows = [r for r in results["ties"] if r["top_p"] < 1.0]
    assert [r for r in rows if r["got"] != r["whole"]] == []
    straddle = results["straddle"]
    assert [r["got"] for r in straddle] == list(range(10, 20))  # every member of the group stays
    assert sum(r["ref"] == r["got"] for r in straddle) == 7  # the reference keeps 7 of the 10
    assert all(r["ref"] in range(10, 20) or r["ref"] == 0 for r in straddle)


def test_qkv_kernel_writes_the_kv_cache(results):
    assert results["kv_write"] and all(r["cache_equal"] and r["y_equal"] for r in results["kv_write"]), \
        results["kv_write"]


def test_decode_attention_equals_sdpa(results):
    assert len(results["attention"]) == 4 and all(r["err"] < 1e-5 for r in results["attention"]), \
        results["attention"]


def test_configure_check_picks_the_kernel(results):
    """The check pick_kernels runs at configure before it lets the kernel sample: it must pass on a good kernel
    (an error there silently kept the PyTorch sampler on the GPU: bench/results/gpu-2026-12-08-decode-floor)."""
    assert results["tuning_agrees"] is True


def test_malformed_calls_are_refused(results):
    assert results["refused"] == {name: True for name in ("params", "seen", "noise", "out", "step", "logits")}


def test_draws_follow_the_processed_distribution(results):
    """1,200 kernel draws at upstream's defaults (temperature 0.8, top-k 1000, top-p 0.95, penalty 1.2), each with
    fresh Exp(1) noise, against the processed distribution and against 1,200 torch.multinomial draws from it:
    chi-square over the tokens with >= 5 expected draws, the rest pooled (fixed seeds: the verdict never changes)."""
    import numpy as np
    from scipy.stats import chi2_contingency, chisquare
    p = np.array(results["p"], dtype=np.float64)
    drawn = np.array(results["draws"])
    assert (p[drawn] > 0).all()  # never a token the processors dropped
    expected = p * DRAWS
    big = np.flatnonzero(expected >= 5)
    small = np.flatnonzero((expected < 5) & (p > 0))

    def cells(tokens):
        counts = np.bincount(tokens, minlength=p.size)
        return np.append(counts[big], counts[small].sum())

    kernel, multinomial = cells(drawn), cells(np.array(results["multinomial"]))
    exp = np.append(expected[big], expected[small].sum())
    assert len(big) >= 20
    assert chisquare(kernel, exp * kernel.sum() / exp.sum()).pvalue > 0.05
    assert chi2_contingency(np.stack([kernel, multinomial])).pvalue > 0.05


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
