"""Measure the errors the tolerance table rests on, for any backend: worst case per quantity, with a bound.

    python -m tools.measure_errors [--backend NAME ...] [--torch-bf16] [--fixture DIR ...]
                                   [--oracle-fixture DESCRIPTOR ...] [--kernel-shapes N] [--report-json PATH]

Runs the model checks (conformance/model_checks.py) on each fixture and every kernel check
(conformance/kernel_checks.py) on N random shapes plus the suite's example shapes, then prints, per
backend and (quantity, precision class): the worst max abs and rel norm error and where they occurred, the
table's current tolerance, and with_margin() of the worst (10x, one digit): the numbers to put in
conformance/tolerances.py (e.g. measured on the GPU for the tf32 and bf16 classes). Exits 1 where a current
tolerance does not hold.

--torch-bf16 adds a second, independent bf16 implementation to measure (model checks only): PyTorch
autocast bf16 on reference/torch_gpt2.py (fp32 master weights, bf16 matmuls and flash attention, fp32
layernorm, softmax and loss, torch.optim.AdamW), on the GPU when there is one.
--oracle-fixture d12 makes a fixture on the fly, as tools.make_fixtures would (same init, batch and
optimizer, B=4, T=64), with the expected values from reference/torch_gpt2.py in float64 on the GPU instead of
reference/oracle.py's numpy (which agree to ~1e-14, tests/test_oracle.py's torch_crosscheck): seconds
instead of minutes for d12, on a machine without the 1.3 GB fixtures/gpt2_124M.
"""

import json
import math
import sys
from types import SimpleNamespace

import numpy as np

from backends.base import Backend, BackendUnavailable
from backends.registry import BUILTIN_BACKENDS, get_backend
from conformance.fixture import default_fixture_dirs, load_fixture
from conformance.kernel_checks import EXAMPLE_SHAPES, random_shape, run_kernel_check
from conformance.model_checks import TRAIN_STEPS, run_model
from conformance.report import write_text
from conformance.tolerances import with_margin
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.layers import KERNEL_NAMES
from reference.model import GPT2Config, init_params
from tools.options import Parser, add_backend_option, add_fixture_option, add_report_options, chosen_backends


def worst_errors(results):
    """CheckResults -> [row] per (backend, quantity, precision): the worst errors, where, the tolerance."""
    rows = {}
    for r in results:
        where = f"{r.backend} {r.check}"
        row = rows.setdefault(
            (r.backend, r.quantity, r.precision),
            {
                "backend": r.backend,
                "quantity": r.quantity,
                "precision": r.precision,
                "max_abs": 0.0,
                "max_abs_at": "",
                "rel_norm": 0.0,
                "rel_norm_at": "",
                "runs": 0,
                "tol_max_abs": r.tol_max_abs,
                "tol_rel_norm": r.tol_rel_norm,
                "passed": True,
            },
        )
        for error in ("max_abs", "rel_norm"):  # NaN (a non-finite output) is the worst and stays
            if math.isnan(getattr(r, error)) or getattr(r, error) > row[error]:
                row[error], row[f"{error}_at"] = getattr(r, error), where
        row["runs"] += 1
        row["passed"] = row["passed"] and r.passed
    for row in rows.values():
        row["suggested_max_abs"] = with_margin(row["max_abs"])
        row["suggested_rel_norm"] = with_margin(row["rel_norm"])
    return sorted(rows.values(), key=lambda row: (row["quantity"], row["backend"]))


# ----------------------------------------------------------------------------- PyTorch autocast bf16
class TorchAutocastModel:
    """reference/torch_gpt2.py under torch.autocast(bfloat16) behind the model-handle interface."""

    def __init__(self, config, params, device):
        import torch

        from reference.torch_gpt2 import from_flat

        self.torch, self.config, self.device = torch, config, device
        self.model = from_flat(config, params, dtype=torch.float32, device=device, flash=True)
        self.optimizer = None
        self._loss = None

    def _tokens(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a, np.int64)).to(self.device)

    def forward(self, inputs, targets=None):
        with self.torch.autocast(device_type=self.device, dtype=self.torch.bfloat16):
            self._loss = self.model(self._tokens(inputs), None if targets is None else self._tokens(targets))
        return None if self._loss is None else self._loss.item()

    def logits(self):
        return self.model.logits.detach().float().cpu().numpy()

    def zero_grad(self):
        self.model.zero_grad(set_to_none=False)

    def backward(self):
        self._loss.backward()

    def grads(self):
        from reference.torch_gpt2 import flat_grads

        return flat_grads(self.model).astype(np.float32)

    def params(self):
        from reference.torch_gpt2 import flat_params

        return flat_params(self.model).astype(np.float32)

    def update(self, settings, t):
        from reference.torch_gpt2 import AdamW

        if self.optimizer is None:
            self.optimizer = AdamW(self.model, settings)
        return self.optimizer.step()  # its step count t is torch's own: 1 at the first call

    def close(self):
        self.model = self.optimizer = self._loss = None


class TorchAutocastBackend(Backend):
    name = "torch-bf16"
    precision = "bf16"

    def __init__(self):
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"torch-bf16 needs PyTorch: {e}") from e
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.description = f"PyTorch {torch.__version__} autocast bf16 on {self.device}, reference/torch_gpt2.py"

    def model(self, config, params, max_B, max_T):
        return TorchAutocastModel(config, init_params(config) if params is None else params, self.device)


# ----------------------------------------------------------------------------- fixtures made by PyTorch
def oracle_fixture(descriptor, B=4, T=64, seed=42):
    """What tools.make_fixtures would write for (descriptor, B, T, seed), in memory, the expected values from
    PyTorch float64 (on the GPU when there is one)."""
    import torch

    from reference.torch_gpt2 import AdamW, flat_grads, from_flat
    from tools.make_fixtures import batch_tokens

    config = GPT2Config.from_descriptor(descriptor)
    params = init_params(config, seed, np.float32)
    tokens, _ = batch_tokens(config, B, T)
    x, y = tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tx, ty = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (x, y))
    model = from_flat(config, params, dtype=torch.float64, device=device)
    optimizer = AdamW(model, AdamWSettings(**TEST_GPT2_SETTINGS))
    losses = []
    for step in range(TRAIN_STEPS):  # test_gpt2.c's loop: step 0 gives the debug state's values
        optimizer.zero_grad()
        loss = model(tx, ty)
        loss.backward()
        if step == 0:
            logits = model.logits[..., : config.vocab_size].detach().float().cpu().numpy()
            grads = flat_grads(model).astype(np.float32)
        losses.append(loss.item())
        optimizer.step()
    del model, optimizer
    return SimpleNamespace(
        name=f"{descriptor}-torch-float64",
        config=config,
        params=params,
        B=B,
        T=T,
        x=x,
        y=y,
        logits=logits,
        loss=np.float32(losses[0]),
        grads=grads,
        expected_losses=np.array(losses, np.float64),
        optimizer=AdamWSettings(**TEST_GPT2_SETTINGS),
    )


def main(argv=None):
    parser = Parser(prog="python -m tools.measure_errors", description=__doc__.splitlines()[0])
    add_backend_option(parser)
    parser.add_argument("--torch-bf16", action="store_true", help="also PyTorch autocast bf16 (model checks)")
    add_fixture_option(parser)
    parser.add_argument(
        "--oracle-fixture",
        action="append",
        metavar="DESCRIPTOR",
        default=[],
        help="a fixture computed on the fly by PyTorch float64 (repeatable), e.g. d12",
    )
    parser.add_argument("--kernel-shapes", type=int, default=300, metavar="N", help="random kernel shapes (300)")
    parser.add_argument("--seed", type=int, default=123, help="of the random kernel shapes and inputs")
    add_report_options(parser, markdown=False)
    args = parser.parse_args(argv)

    backends = []
    for name in chosen_backends(args, BUILTIN_BACKENDS):
        try:
            backends.append(get_backend(name))
        except BackendUnavailable as e:
            print(f"backend {name}: unavailable: {e}")
    if args.torch_bf16:
        backends.append(TorchAutocastBackend())
    fixtures = [load_fixture(path) for path in args.fixture or default_fixture_dirs()]
    fixtures += [oracle_fixture(descriptor) for descriptor in args.oracle_fixture]
    results = []
    for fixture in fixtures:
        for backend in backends:
            results += run_model(backend, fixture).results  # what a backend cannot do has no error to measure
    rng = np.random.default_rng(args.seed)
    shapes = list(EXAMPLE_SHAPES) + [random_shape(rng) for _ in range(args.kernel_shapes)]
    for backend in backends:
        for n, shape in enumerate(shapes):
            for name in KERNEL_NAMES:
                if backend.has_kernel(name):
                    results += run_kernel_check(backend, name, shape, seed=args.seed + n)

    rows = worst_errors(results)
    for row in rows:
        verdict = "ok" if row["passed"] else "EXCEEDED"
        print(
            f"{row['quantity']:45} {row['precision']:5} abs {row['max_abs']:.2e} ({row['max_abs_at']})  "
            f"rel {row['rel_norm']:.2e} ({row['rel_norm_at']})  tolerance {row['tol_max_abs']:.0e} / "
            f"{row['tol_rel_norm']:.0e} {verdict}  suggested {row['suggested_max_abs']:.0e} / "
            f"{row['suggested_rel_norm']:.0e}"
        )
    if args.report_json:
        write_text(args.report_json, json.dumps(rows, indent=1, default=str) + "\n")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
