"""GPU checks of libllmc CUDA that the pytest suite does not make, judged by the suite's tolerance table.

    python3 -m tools.cuda_check [--backend NAME ...] [--report-json PATH] [--no-torch] [--quick]

The suite (conformance/test_kernels.py, test_model.py) runs on the GPU too, but at small shapes and in
test_gpt2.c's AdamW convention only. This adds:
  - every kernel at GPU-sized shapes (head size 64: the tensor-core attention; T = 512, 1024: many
    tiles and causal blocks), through conformance/kernel_checks.run_kernel_check;
  - 10 training steps of a small model in the other AdamW convention (PyTorch's / llm.c CUDA's: decay
    on 2-D tensors only, global-norm clipping) against reference.model.GPT2 and reference.adamw in float64;
  - bitwise determinism run to run (small model; d12 at B=4, T=1024 unless --quick);
  - out of device memory: a model too large for the card is refused with LLMC_ERR_ALLOC, and a model made
    before trains on, bit for bit as if nothing had happened;
  - d12 at B=16, T=1024 (past llm.c's int32 activation offsets) against PyTorch float64 on the same device
    (unless --quick or --no-torch).
Every number becomes a verdict through conformance.checks.compare under conformance/tolerances.py
at the backend's precision. The backend "torch-bf16" (PyTorch autocast bf16, tools/measure_errors.py) gets the
model check in the other AdamW convention only: the second bf16 measurement of the gradient norm. Prints the
table, writes the JSON report (--report-json), exits 1 if any check fails.
"""

import dataclasses
import sys
import time

import numpy as np

from backends.base import BackendUnavailable
from backends.registry import get_backend
from conformance.checks import compare
from conformance.kernel_checks import KernelShape, run_kernel_check
from conformance.report import format_table, suite_meta, write_json
from native.binding import ERROR_CODES, LlmcError
from reference.adamw import AdamW, AdamWSettings
from reference.layers import KERNEL_NAMES
from reference.model import GPT2, PARAM_NAMES, GPT2Config, init_params, split_params
from tools.options import Parser, add_backend_option, add_report_options, chosen_backends, run_main

GPU_KERNEL_SHAPES = (
    KernelShape(B=2, T=512, C=256, NH=4, OC=384, V=1000, Vp=1024),
    KernelShape(B=1, T=1024, C=768, NH=12, OC=768, V=1000, Vp=1024),
)
SMALL = "L2-NH4-C64-V256-T64"
LLMC_ERR_ALLOC = ERROR_CODES["LLMC_ERR_ALLOC"]
# PyTorch's convention (llm.c's CUDA trainer): the suite's fixtures train with test_gpt2.c's instead
DECAY_2D_CLIP = AdamWSettings(
    learning_rate=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, decay_all=False, grad_clip=1.0
)
TORCH_GRADS = ("wte", "wpe", "qkvw", "fcprojw", "ln1w", "lnfb")


def check_kernels(backend):
    results = []
    for seed, s in enumerate(GPU_KERNEL_SHAPES):
        where = f"B={s.B} T={s.T} C={s.C} NH={s.NH}"
        for name in KERNEL_NAMES:
            if not backend.has_kernel(name):
                print(f"{backend.name}: no kernel {name}, skipped")
                continue
            for r in run_kernel_check(backend, name, s, seed):
                results.append(dataclasses.replace(r, check=f"{r.check} {where}"))
    return results


def check_model_adamw(backend, descriptor=SMALL, B=4, T=64, steps=10):
    """Logits, gradients and grad norm of step 0 and every step's loss against the float64 oracle."""
    config = GPT2Config.from_descriptor(descriptor)
    V, prec = config.vocab_size, backend.precision
    tag = f"model-2d-decay-clip/{descriptor} B={B} T={T}"
    rng = np.random.default_rng(42)
    inputs = rng.integers(0, V, (B, T)).astype(np.int32)
    targets = np.roll(inputs, -1, axis=1)
    params = init_params(config, seed=42)
    ref, ref_opt = GPT2(config, params, dtype=np.float64), AdamW(DECAY_2D_CLIP, config, np.float64)
    results = []

    def judge(check, got, want, quantity):
        results.append(compare(f"{tag}/{check}", backend.name, got, want, (quantity, prec)))

    model = backend.model(config, params, B, T)
    try:
        for step in range(steps):
            loss, ref_loss = model.forward(inputs, targets), ref.forward(inputs, targets)
            if step == 0:
                judge("logits", model.logits()[..., :V], ref.logits[..., :V], "logits")
            model.zero_grad()
            model.backward()
            ref.zero_grad()
            ref.backward()
            if step == 0:
                grads = split_params(model.grads(), config)
                for name in PARAM_NAMES:
                    rows = slice(0, V) if name == "wte" else slice(None)
                    judge(f"grad/d{name}", grads[name][rows], ref.grads[name][rows], f"grad:d{name}")
            judge(f"train_loss/{step}", loss, ref_loss, "losses10")
            norm = model.update(DECAY_2D_CLIP, step + 1)
            ref_norm = ref_opt.step(ref.params_memory, ref.grads_memory, step + 1)
            if step == 0:
                judge("grad_norm", norm, ref_norm, "grad_norm")
    finally:
        model.close()
    return results


def train_fingerprint(backend, config, B, T, steps, seed=7):
    """Losses, final params and grads of a few training steps."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    targets = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    model = backend.model(config, init_params(config, seed=seed), B, T)
    try:
        losses = []
        for step in range(steps):
            losses.append(model.forward(inputs, targets))
            model.zero_grad()
            model.backward()
            model.update(DECAY_2D_CLIP, step + 1)
        return dict(losses=np.array(losses, np.float32), params=model.params(), grads=model.grads())
    finally:
        model.close()


def check_determinism(backend, descriptor, B, T, steps=3):
    """Two identical runs must agree bit for bit (the table's "rerun" entry is exactly zero)."""
    config = GPT2Config.from_descriptor(descriptor)
    run1 = train_fingerprint(backend, config, B, T, steps)
    run2 = train_fingerprint(backend, config, B, T, steps)
    return [
        compare(
            f"determinism/{descriptor} B={B} T={T}/{key}",
            backend.name,
            run2[key],
            run1[key],
            ("rerun", backend.precision),
        )
        for key in run1
    ]


def check_out_of_memory(backend, descriptor=SMALL, B=4, T=64):
    """A d12 model for 4096 x 1024 tokens (terabytes of activations) fails with LLMC_ERR_ALLOC; a small model
    made before it trains on and reproduces an undisturbed run exactly."""
    config = GPT2Config.from_descriptor(descriptor)
    undisturbed = train_fingerprint(backend, config, B, T, steps=2)
    rng = np.random.default_rng(7)
    inputs = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    targets = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    model = backend.model(config, init_params(config, seed=7), B, T)
    tag = f"out-of-memory/{backend.name}"
    try:
        d12 = GPT2Config.from_descriptor("d12")
        try:
            backend.model(d12, init_params(d12, seed=1), 4096, 1024).close()
            code = None
        except LlmcError as e:
            code = e.code
        losses = []
        for step in range(2):
            losses.append(model.forward(inputs, targets))
            model.zero_grad()
            model.backward()
            model.update(DECAY_2D_CLIP, step + 1)
        after = dict(losses=np.array(losses, np.float32), params=model.params(), grads=model.grads())
    finally:
        model.close()
    alloc = compare(
        f"{tag}/huge_model_refused_with_LLMC_ERR_ALLOC",
        backend.name,
        1.0 if code == LLMC_ERR_ALLOC else 0.0,
        1.0,
        ("rerun", backend.precision),
    )
    alloc = dataclasses.replace(
        alloc, detail=f"the huge model's error code: {code} (LLMC_ERR_ALLOC is {LLMC_ERR_ALLOC})"
    )
    return [alloc] + [
        compare(
            f"{tag}/model_made_before_still_trains/{key}",
            backend.name,
            after[key],
            undisturbed[key],
            ("rerun", backend.precision),
        )
        for key in undisturbed
    ]


def check_against_torch(backend, descriptor="d12", B=16, T=1024):
    """Loss and gradients of one step against PyTorch float64 on the same device; d12 at B=16, T=1024
    puts B*T*4C and L*B*T*C past 2^31 (llm.c's fp32 trainer overflows its int offsets there)."""
    import torch

    from reference.torch_gpt2 import flat_grads, from_flat

    config = GPT2Config.from_descriptor(descriptor)
    V, prec, tag = config.vocab_size, backend.precision, f"torch-float64/{descriptor} B={B} T={T}"
    params = init_params(config, seed=42)
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, V, (B, T)).astype(np.int32)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    model = backend.model(config, params, B, T)
    try:
        loss = model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        grads = split_params(model.grads(), config)
    finally:
        model.close()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = from_flat(config, params, dtype=torch.float64, device=device)
    ref_loss = ref(torch.from_numpy(inputs).long().to(device), torch.from_numpy(targets).long().to(device))
    ref_loss.backward()
    ref_grads = split_params(flat_grads(ref), config)
    del ref
    if device == "cuda":
        torch.cuda.empty_cache()
    results = [compare(f"{tag}/loss", backend.name, loss, ref_loss.item(), ("loss", prec))]
    for name in TORCH_GRADS:
        rows = slice(0, V) if name == "wte" else slice(None)
        results.append(
            compare(
                f"{tag}/grad/d{name}", backend.name, grads[name][rows], ref_grads[name][rows], (f"grad:d{name}", prec)
            )
        )
    return results


def main(argv=None):
    parser = Parser(prog="python -m tools.cuda_check", description=__doc__.splitlines()[0])
    add_backend_option(parser, default=["cuda", "cuda-tf32", "cuda-bf16"])
    add_report_options(parser, json_default="out/cuda_check.json", markdown=False)
    parser.add_argument("--no-torch", action="store_true", help="skip the d12 cross-check against PyTorch")
    parser.add_argument("--quick", action="store_true", help="no d12 (neither its determinism nor PyTorch)")
    return run_main("tools.cuda_check", check, parser, argv)


def check(args):
    results, described = [], {}
    for name in chosen_backends(args, ()):
        try:
            if name == "torch-bf16":
                from tools.measure_errors import TorchAutocastBackend

                backend = TorchAutocastBackend()
            else:
                backend = get_backend(name)
        except BackendUnavailable as e:
            print(f"{name}: unavailable: {e}")
            return 1
        described[name] = backend.description or name
        print(f"{name}: {backend.description}", flush=True)
        t0 = time.time()
        if name == "torch-bf16":
            results += check_model_adamw(backend)
            continue
        results += check_kernels(backend)
        results += check_model_adamw(backend)
        results += check_determinism(backend, SMALL, 4, 64)
        if name != "cpu":  # the CPU library would try to allocate the terabytes in host memory
            results += check_out_of_memory(backend)
        if not args.quick:
            results += check_determinism(backend, "d12", 4, 1024)
        if not (args.quick or args.no_torch):
            results += check_against_torch(backend)
        print(f"{name}: checks took {time.time() - t0:.1f} s", flush=True)
    print(format_table(results))
    path = args.report_json
    write_json(
        results,
        path,
        suite_meta(described, source="python -m tools.cuda_check", quick=args.quick, no_torch=args.no_torch),
    )
    failed = [r for r in results if not r.passed]
    for r in failed:
        print("FAILED:", r.message())
    print(f"{len(results) - len(failed)}/{len(results)} checks passed; details in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
