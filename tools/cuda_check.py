"""GPU correctness of libllmc_cuda.so: every kernel and a small model against the float64 numpy oracle,
bitwise determinism run to run, and a d12-size run (B=16, T=1024, 64-bit offsets) against PyTorch.

    python3 -m tools.cuda_check [--out DIR] [--no-torch]

Errors are relative norms |x - ref| / |ref| against reference.layers / reference.model.GPT2 in float64,
on fresh random inputs (fixed seeds). Outputs are poisoned with NaN before a forward kernel runs, so an
unwritten element fails; gradient outputs start random, so llm.c's += accumulation is checked too.
Limits: strict fp32 (backend cuda) 1e-5 per kernel and 1e-4 for the model; TF32 (cuda-tf32) 1e-2
and 5e-2: TF32 keeps 10 mantissa bits, so single products land near 3e-4 and the model's error grows
with depth. Writes cuda_check.json under --out and exits 1 if any check fails.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from conformance.backends import get_backend, BackendUnavailable
from reference import layers
from reference.adamw import AdamW, AdamWSettings, TEST_GPT2_SETTINGS
from reference.model import GPT2, GPT2Config, PARAM_NAMES, init_params, split_params

KERNEL_LIMIT = {"fp32": 1e-5, "tf32": 1e-2}
MODEL_LIMIT = {"fp32": 1e-4, "tf32": 5e-2}
# the kernels whose arithmetic is cuBLAS GEMMs, hence TF32 in cuda-tf32
GEMM_KERNELS = {"matmul_forward", "matmul_backward", "attention_forward", "attention_backward"}


def rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(x)):
        return math.inf
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / (denom if denom > 0 else 1.0))


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def poisoned(*shape):
    return np.full(shape, np.nan, np.float32)


# ----------------------------------------------------------------------------- kernels
def kernel_cases(rng):
    """name -> callable(kernels) returning {output name: (computed, float64 reference)}."""
    B, T, C, NH, OC, V, Vp = 2, 64, 128, 4, 384, 1000, 1024
    d = lambda a: a.astype(np.float64)

    def encoder_forward(k):
        inp = rng.integers(0, V, (B, T)).astype(np.int32)
        wte, wpe = f32(rng, Vp, C), f32(rng, T * 2, C)
        out = poisoned(B, T, C)
        k.encoder_forward(out, inp, wte, wpe)
        return {"out": (out, layers.encoder_forward(inp, d(wte), d(wpe)))}

    def encoder_backward(k):
        inp = rng.integers(0, 50, (B, T)).astype(np.int32)   # few distinct tokens: many repeats per row
        dwte, dwpe, dout = f32(rng, Vp, C), f32(rng, T, C), f32(rng, B, T, C)
        dwte0, dwpe0 = d(dwte), d(dwpe)
        k.encoder_backward(dwte, dwpe, dout, inp)
        gw, gp = layers.encoder_backward(d(dout), inp, dwte.shape, dwpe.shape)
        return {"dwte": (dwte, dwte0 + gw), "dwpe": (dwpe, dwpe0 + gp)}

    def layernorm_forward(k):
        inp, w, b = f32(rng, B, T, C, scale=3.0) + 1.0, f32(rng, C), f32(rng, C)
        out, mean, rstd = poisoned(B, T, C), poisoned(B, T), poisoned(B, T)
        k.layernorm_forward(out, mean, rstd, inp, w, b)
        ro, rm, rr = layers.layernorm_forward(d(inp), d(w), d(b))
        return {"out": (out, ro), "mean": (mean, rm), "rstd": (rstd, rr)}

    def layernorm_backward(k):
        inp, w, b, dout = f32(rng, B, T, C), f32(rng, C), f32(rng, C), f32(rng, B, T, C)
        _, mean, rstd = layers.layernorm_forward(inp, w, b)
        dinp, dw, db = f32(rng, B, T, C), f32(rng, C), f32(rng, C)
        refs = [d(dinp), d(dw), d(db)]
        k.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd)
        gi, gw, gb = layers.layernorm_backward(d(dout), d(inp), d(w), d(mean), d(rstd))
        return {"dinp": (dinp, refs[0] + gi), "dweight": (dw, refs[1] + gw), "dbias": (db, refs[2] + gb)}

    def matmul_forward(k):
        inp, w, b = f32(rng, B, T, C), f32(rng, OC, C), f32(rng, OC)
        out, out_nobias = poisoned(B, T, OC), poisoned(B, T, OC)
        k.matmul_forward(out, inp, w, b)
        k.matmul_forward(out_nobias, inp, w, None)
        return {"out": (out, layers.matmul_forward(d(inp), d(w), d(b))),
                "out (no bias)": (out_nobias, layers.matmul_forward(d(inp), d(w)))}

    def matmul_backward(k):
        inp, w, dout = f32(rng, B, T, C), f32(rng, OC, C), f32(rng, B, T, OC)
        dinp, dw, db = f32(rng, B, T, C), f32(rng, OC, C), f32(rng, OC)
        refs = [d(dinp), d(dw), d(db)]
        k.matmul_backward(dinp, dw, db, dout, inp, w)
        gi, gw, gb = layers.matmul_backward(d(dout), d(inp), d(w))
        return {"dinp": (dinp, refs[0] + gi), "dweight": (dw, refs[1] + gw), "dbias": (db, refs[2] + gb)}

    # T=64 and T=512: the library splits T >= 256 into causal blocks
    def attention_forward(k):
        results = {}
        for b, t in ((B, T), (1, 512)):
            inp = f32(rng, b, t, 3 * C)
            out, preatt, att = poisoned(b, t, C), poisoned(b, NH, t, t), poisoned(b, NH, t, t)
            k.attention_forward(out, preatt, att, inp, NH)
            ro, ra = layers.attention_forward(d(inp), NH)
            results.update({f"out T={t}": (out, ro), f"att T={t}": (att, ra)})
        return results

    def attention_backward(k):
        results = {}
        for b, t in ((B, T), (1, 512)):
            inp, dout = f32(rng, b, t, 3 * C), f32(rng, b, t, C)
            _, att = layers.attention_forward(inp, NH)
            dinp = f32(rng, b, t, 3 * C)
            ref0 = d(dinp)
            k.attention_backward(dinp, np.zeros_like(att), np.zeros_like(att), dout, inp, att, NH)
            results[f"dinp T={t}"] = (dinp, ref0 + layers.attention_backward(d(dout), d(inp), d(att), NH))
        return results

    def gelu_forward(k):
        inp = f32(rng, B, T, 4 * C, scale=2.0)
        out = poisoned(B, T, 4 * C)
        k.gelu_forward(out, inp)
        return {"out": (out, layers.gelu_forward(d(inp)))}

    def gelu_backward(k):
        inp, dout, dinp = f32(rng, B, T, 4 * C, scale=2.0), f32(rng, B, T, 4 * C), f32(rng, B, T, 4 * C)
        ref0 = d(dinp)
        k.gelu_backward(dinp, inp, dout)
        return {"dinp": (dinp, ref0 + layers.gelu_backward(d(dout), d(inp)))}

    def residual_forward(k):
        a, b = f32(rng, B, T, C), f32(rng, B, T, C)
        out = poisoned(B, T, C)
        k.residual_forward(out, a, b)
        return {"out": (out, d(a) + d(b))}

    def residual_backward(k):
        d1, d2, dout = f32(rng, B, T, C), f32(rng, B, T, C), f32(rng, B, T, C)
        r1, r2 = d(d1) + d(dout), d(d2) + d(dout)
        k.residual_backward(d1, d2, dout)
        return {"dinp1": (d1, r1), "dinp2": (d2, r2)}

    def softmax_forward(k):
        logits = f32(rng, B, T, Vp, scale=3.0)
        probs = poisoned(B, T, Vp)
        k.softmax_forward(probs, logits, V)
        return {"probs": (probs, layers.softmax_forward(d(logits), V))}

    def crossentropy_forward(k):
        probs = layers.softmax_forward(f32(rng, B, T, Vp, scale=3.0), V).astype(np.float32)
        targets = rng.integers(0, V, (B, T)).astype(np.int32)
        losses = poisoned(B, T)
        k.crossentropy_forward(losses, probs, targets)
        return {"losses": (losses, layers.crossentropy_forward(d(probs), targets))}

    def crossentropy_softmax_backward(k):
        probs = layers.softmax_forward(f32(rng, B, T, Vp, scale=3.0), V).astype(np.float32)
        targets = rng.integers(0, V, (B, T)).astype(np.int32)
        dlosses, dlogits = f32(rng, B, T), f32(rng, B, T, Vp)
        ref0 = d(dlogits)
        k.crossentropy_softmax_backward(dlogits, dlosses, probs, targets, V)
        return {"dlogits": (dlogits, ref0 + layers.crossentropy_softmax_backward(d(dlosses), d(probs), targets, V))}

    return dict((f.__name__, f) for f in (
        encoder_forward, encoder_backward, layernorm_forward, layernorm_backward, matmul_forward, matmul_backward,
        attention_forward, attention_backward, gelu_forward, gelu_backward, residual_forward, residual_backward,
        softmax_forward, crossentropy_forward, crossentropy_softmax_backward))


def check_kernels(backend, results):
    rng = np.random.default_rng(1234)
    for name, case in kernel_cases(rng).items():
        limit = KERNEL_LIMIT[backend.precision] if name in GEMM_KERNELS else KERNEL_LIMIT["fp32"]
        for output, (x, ref) in case(backend.kernels).items():
            results.append(dict(backend=backend.name, check=f"kernel {name}: {output}", error=rel_err(x, ref),
                                limit=limit))


# ----------------------------------------------------------------------------- model
def check_model(backend, results, descriptor="L2-NH4-C64-V256-T64", B=4, T=64, steps=10):
    config = GPT2Config.from_descriptor(descriptor)
    limit = MODEL_LIMIT[backend.precision]
    rng = np.random.default_rng(42)
    inputs = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    targets = np.roll(inputs, -1, axis=1)
    params = init_params(config, seed=42)
    for label, settings in (("llm.c CPU AdamW", AdamWSettings(**TEST_GPT2_SETTINGS)),
                            ("2-D decay + clip 1.0", AdamWSettings(learning_rate=1e-3, beta1=0.9, beta2=0.95,
                                                                   weight_decay=0.1, decay_all=False,
                                                                   grad_clip=1.0))):
        ref = GPT2(config, params, dtype=np.float64)
        ref_opt = AdamW(settings, config, np.float64)
        model = backend.model(config, params, B, T)
        tag = f"model {descriptor} B={B} T={T} [{label}]"
        for step in range(steps):
            loss = model.forward(inputs, targets)
            ref_loss = ref.forward(inputs, targets)
            if step == 0:
                results.append(dict(backend=backend.name, check=f"{tag}: logits", limit=limit,
                                    error=rel_err(model.logits()[..., :config.vocab_size],
                                                  ref.logits[..., :config.vocab_size])))
                padding = np.abs(model.logits()[..., config.vocab_size:]).max(initial=0.0)
                results.append(dict(backend=backend.name, check=f"{tag}: padded logits are 0", error=float(padding),
                                    limit=0.0))
            model.zero_grad()
            model.backward()
            ref.zero_grad()
            ref.backward()
            if step == 0:
                grads, ref_grads = split_params(model.grads(), config), ref.grads
                for name in PARAM_NAMES:
                    results.append(dict(backend=backend.name, check=f"{tag}: grad {name}", limit=limit,
                                        error=rel_err(grads[name], ref_grads[name])))
            results.append(dict(backend=backend.name, check=f"{tag}: loss step {step}", limit=limit,
                                error=abs(loss - ref_loss) / abs(ref_loss), value=loss, reference=float(ref_loss)))
            norm = model.update(settings, step + 1)
            ref_norm = ref_opt.step(ref.params_memory, ref.grads_memory, step + 1)
            if step == 0:
                results.append(dict(backend=backend.name, check=f"{tag}: grad norm", limit=limit,
                                    error=abs(norm - ref_norm) / ref_norm))
        results.append(dict(backend=backend.name, check=f"{tag}: params after {steps} steps", limit=limit,
                            error=rel_err(model.params(), ref.params_memory)))
        m, v = model.optimizer_state()
        results.append(dict(backend=backend.name, check=f"{tag}: AdamW m after {steps} steps", limit=limit,
                            error=rel_err(m, ref_opt.m)))
        model.close()


def train_fingerprint(backend, config, B, T, steps, seed=7):
    """Losses, final params and grads of a few steps, as raw bytes for a bitwise comparison."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    targets = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    settings = AdamWSettings(learning_rate=6e-4, beta1=0.9, beta2=0.95, weight_decay=0.1, decay_all=False,
                             grad_clip=1.0)
    model = backend.model(config, init_params(config, seed=seed), B, T)
    losses = []
    for step in range(steps):
        losses.append(model.forward(inputs, targets))
        model.zero_grad()
        model.backward()
        model.update(settings, step + 1)
    out = dict(losses=np.array(losses, np.float32), params=model.params(), grads=model.grads())
    model.close()
    return out


def check_determinism(backend, results, descriptor, B, T, steps=3):
    config = GPT2Config.from_descriptor(descriptor)
    a = train_fingerprint(backend, config, B, T, steps)
    b = train_fingerprint(backend, config, B, T, steps)
    for key in a:
        same = a[key].tobytes() == b[key].tobytes()
        results.append(dict(backend=backend.name, check=f"determinism {descriptor} B={B} T={T}: {key} bitwise equal",
                            error=0.0 if same else 1.0, limit=0.0))


def check_large_against_torch(backend, results, B=16, T=1024):
    """d12 at B=16, T=1024 (llm.c's fp32 trainer overflows int32 offsets here): loss, grad norm and a
    few gradients against PyTorch in float64 on the same card."""
    import torch
    from reference.torch_gpt2 import from_flat, flat_grads
    config = GPT2Config.from_descriptor("d12")
    params = init_params(config, seed=42)
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    targets = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    model = backend.model(config, params, B, T)
    loss = model.forward(inputs, targets)
    model.zero_grad()
    model.backward()
    grads = split_params(model.grads(), config)
    model.close()
    ref = from_flat(config, params, dtype=torch.float64, device="cuda")
    ref_loss = ref(torch.from_numpy(inputs).long().cuda(), torch.from_numpy(targets).long().cuda())
    ref_loss.backward()
    ref_grads = split_params(flat_grads(ref), config)
    del ref
    torch.cuda.empty_cache()
    limit = MODEL_LIMIT[backend.precision]
    tag = f"d12 B={B} T={T} vs torch float64"
    results.append(dict(backend=backend.name, check=f"{tag}: loss", limit=limit,
                        error=abs(loss - ref_loss.item()) / ref_loss.item(), value=loss, reference=ref_loss.item()))
    for name in ("wte", "wpe", "qkvw", "fcprojw", "ln1w", "lnfb"):
        results.append(dict(backend=backend.name, check=f"{tag}: grad {name}", limit=limit,
                            error=rel_err(grads[name], ref_grads[name])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="directory for cuda_check.json")
    parser.add_argument("--no-torch", action="store_true", help="skip the d12 cross-check against PyTorch")
    parser.add_argument("--backends", default="cuda,cuda-tf32", help="comma-separated (cpu: to test this script)")
    parser.add_argument("--quick", action="store_true", help="small shapes only (no d12)")
    args = parser.parse_args(argv)
    results = []
    for name in args.backends.split(","):
        try:
            backend = get_backend(name)
        except BackendUnavailable as e:
            print(f"{name}: unavailable: {e}")
            return 1
        print(f"{name}: {backend.description}", flush=True)
        t0 = time.time()
        check_kernels(backend, results)
        check_model(backend, results)
        check_determinism(backend, results, "L2-NH4-C64-V256-T64", 4, 64)
        if not args.quick:
            check_determinism(backend, results, "d12", 4, 1024)
        if not (args.quick or args.no_torch):
            check_large_against_torch(backend, results)
        print(f"{name}: checks took {time.time() - t0:.1f} s", flush=True)
    failed = [r for r in results if not r["error"] <= r["limit"]]
    for r in results:
        r["ok"] = bool(r["error"] <= r["limit"])
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['backend']:9s} {r['check']:75s} {r['error']:.3e} (limit {r['limit']:.0e})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cuda_check.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    print(f"{len(results) - len(failed)}/{len(results)} checks passed; details in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
