"""An example port speaking the suite's command-line protocol (PORTING.md), built on our own backends.

It is the pattern to copy for a port in any language: read the checkpoint and the batch, run the model,
write the outputs. Validate it (here the cpu backend, through the protocol):

    python -m tools.conform --backend "cmd:python -m tools.port_example --backend cpu"

The protocol calls (the suite appends them to the command):

    info
    forward  --model M.bin --batch X.bin --out OUT.bin
    backward --model M.bin --batch X.bin --out OUT.bin
    train    --model M.bin --batch X.bin --out OUT.bin --steps N --first-step T [--state S.bin]
             --learning-rate LR --beta1 B1 --beta2 B2 --eps EPS --weight-decay WD --decay-all 0|1 --grad-clip G

--bug NAME makes it a deliberately wrong port, so the suite's self-test (tests/test_ports.py) can prove
each mistake is caught: the math bugs patch reference/'s numpy code in this process only (so they need
--backend reference); the output bugs (doubled-grad-norms, zeroed-optimizer-state, params-one-step-behind)
change what `train` replies, on any backend. Two more flags replay a real port's habits: --noise makes
it not bit-reproducible (random changes of the last bit of some outputs; info then says "deterministic":
false), --chatty prints to stdout and stderr on every call, as a port's runtime may. --precision CLASS
makes `info` report another tolerance class than the backend's (fp32, tf32, bf16): a wrong port judged
under a looser class shows whether that class still catches the mistake.
"""

import argparse
import contextlib
import functools
import io
import json
import math
import os
import sys

import numpy as np

from backends.base import BackendUnavailable
from backends.ports import PRECISIONS
from backends.protocol import EXIT_UNSUPPORTED, PROTOCOL_VERSION, expect_array, read_arrays, write_arrays
from backends.registry import get_backend
from reference import adamw, layers
from reference.adamw import AdamWSettings
from reference.formats import read_checkpoint

VERSION = "1.0"


# ----------------------------------------------------------------------------- deliberate bugs
def _attention_forward_unmasked(inp, NH):
    """attention_forward without the causal mask: every query also sees the keys after it."""
    C = inp.shape[-1] // 3
    q, k, v = (layers._split_heads(inp[..., i * C : (i + 1) * C], NH) for i in range(3))
    preatt = (q @ k.transpose(0, 1, 3, 2)) * inp.dtype.type(1.0 / math.sqrt(q.shape[3]))
    att = np.exp(preatt - preatt.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    return layers._merge_heads(att @ v), att


def _adamw_step_without_bias_correction(self, params, grads, t):
    """AdamW that forgets to divide m and v by (1 - beta^t)."""
    s = self.settings
    f = params.dtype.type
    self.m[:] = f(s.beta1) * self.m + f(1 - s.beta1) * grads
    self.v[:] = f(s.beta2) * self.v + f(1 - s.beta2) * grads * grads
    decay = params * f(s.weight_decay)
    if not s.decay_all:
        decay *= adamw.decay_mask(self.config, params.dtype)
    params -= f(s.learning_rate) * (self.m / (np.sqrt(self.v) + f(s.eps)) + decay)
    return adamw.global_norm(grads)


def _softmax_over_padding(logits, V):
    """softmax over all Vp columns: the padded (zero) logits steal probability mass."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# what `train` replies, made wrong: {name: (description, change(reply, params before the last update))}
OUTPUT_BUGS = {
    "doubled-grad-norms": (
        "grad_norms twice the gradient's norm",
        lambda reply, before: reply.update(grad_norms=2 * reply["grad_norms"]),
    ),
    "zeroed-optimizer-state": (
        "m and v replied as zeros",
        lambda reply, before: reply.update(m=0 * reply["m"], v=0 * reply["v"]),
    ),
    "params-one-step-behind": (
        "params as they were before the last update",
        lambda reply, before: reply.update(params=before),
    ),
}

BUGS = {
    "gelu-constant": (
        "GELU's tanh argument scaled by 2/pi instead of sqrt(2/pi)",
        lambda: setattr(layers, "GELU_SCALE", 2.0 / math.pi),
    ),
    "no-causal-mask": (
        "attention without the causal mask",
        lambda: setattr(layers, "attention_forward", _attention_forward_unmasked),
    ),
    "layernorm-eps": (
        "layernorm with eps 1e-3 instead of 1e-5",
        lambda: setattr(layers, "layernorm_forward", functools.partial(layers.layernorm_forward, eps=1e-3)),
    ),
    "adamw-no-bias-correction": (
        "AdamW without bias correction",
        lambda: setattr(adamw.AdamW, "step", _adamw_step_without_bias_correction),
    ),
    "softmax-padding": (
        "softmax over the padded vocabulary too",
        lambda: setattr(layers, "softmax_forward", _softmax_over_padding),
    ),
}


# ----------------------------------------------------------------------------- protocol operations
def read_batch(path, config, need_targets):
    arrays = read_arrays(path)
    x = arrays.get("x")
    if x is None or x.ndim != 2:
        raise ValueError(f"{path}: needs an int32 array 'x' of shape (B, T)")
    x = expect_array(arrays, path, "x", x.shape, np.int32)
    y = arrays.get("y")
    if y is not None:
        y = expect_array(arrays, path, "y", x.shape, np.int32)
    elif need_targets:
        raise ValueError(f"{path}: needs an int32 array 'y' of shape {x.shape}")
    for name, tokens in (("x", x), ("y", y)):
        if tokens is not None and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
            raise ValueError(f"{path}: array {name!r} has token ids outside [0, {config.vocab_size})")
    return x, y


def _noisy(arrays):
    """--noise: the last bit of about one float output element in a hundred flipped, differently every
    call (a port whose sums run in a thread-dependent order)."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == np.float32 and value.ndim:
            flip = (rng.random(value.shape) < 0.01) & (value != 0)  # a sum's order never makes a zero
            arrays[name] = np.where(flip, (value.view(np.uint32) ^ np.uint32(1)).view(np.float32), value)
    return arrays


def write_reply(args, arrays):
    write_arrays(args.out, _noisy(arrays) if args.noise else arrays)


def op_forward(backend, args, with_backward):
    config, params = read_checkpoint(args.model)
    x, y = read_batch(args.batch, config, need_targets=with_backward)
    model = backend.model(config, params, *x.shape)
    try:
        loss = model.forward(x, y)
        out = {"logits": model.logits()}
        if y is not None:
            out["loss"] = np.float32(loss)
        if with_backward:
            model.zero_grad()
            model.backward()
            out["grads"] = model.grads()
    finally:
        model.close()
    write_reply(args, out)


def op_train(backend, args):
    config, params = read_checkpoint(args.model)
    x, y = read_batch(args.batch, config, need_targets=True)
    settings = AdamWSettings(
        learning_rate=args.learning_rate,
        beta1=args.beta1,
        beta2=args.beta2,
        eps=args.eps,
        weight_decay=args.weight_decay,
        decay_all=bool(args.decay_all),
        grad_clip=args.grad_clip,
    )
    model = backend.model(config, params, *x.shape)
    try:
        if args.state:
            state = read_arrays(args.state)
            P = config.num_parameters
            model.set_optimizer_state(
                expect_array(state, args.state, "m", (P,)), expect_array(state, args.state, "v", (P,))
            )
        losses, norms = [], []
        for step in range(args.steps):
            losses.append(model.forward(x, y))
            model.zero_grad()
            model.backward()
            before = model.params()
            norms.append(model.update(settings, args.first_step + step))
        m, v = model.optimizer_state()
        reply = {
            "losses": np.array(losses, np.float32),
            "grad_norms": np.array(norms, np.float32),
            "params": model.params(),
            "m": m,
            "v": v,
        }
        if args.bug in OUTPUT_BUGS:
            OUTPUT_BUGS[args.bug][1](reply, before)
        write_reply(args, reply)
    finally:
        model.close()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.port_example", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="cpu", help="the suite backend doing the work (default: cpu)")
    p.add_argument(
        "--bug",
        choices=sorted(BUGS) + sorted(OUTPUT_BUGS),
        help="make a deliberately wrong port (the math bugs need --backend reference)",
    )
    p.add_argument("--precision", choices=PRECISIONS, help="the tolerance class info reports (default: the backend's)")
    p.add_argument("--noise", action="store_true", help="not bit-reproducible: random last-bit changes of outputs")
    p.add_argument("--chatty", action="store_true", help="print to stdout and stderr on every call")
    ops = p.add_subparsers(dest="op", required=True)
    ops.add_parser("info")
    for name in ("forward", "backward", "train"):
        op = ops.add_parser(name)
        op.add_argument("--model", required=True)
        op.add_argument("--batch", required=True)
        op.add_argument("--out", required=True)
        if name == "train":
            op.add_argument("--steps", type=int, required=True)
            op.add_argument("--first-step", type=int, default=1)
            op.add_argument("--state")
            op.add_argument("--learning-rate", type=float, required=True)
            op.add_argument("--beta1", type=float, required=True)
            op.add_argument("--beta2", type=float, required=True)
            op.add_argument("--eps", type=float, required=True)
            op.add_argument("--weight-decay", type=float, required=True)
            op.add_argument("--decay-all", type=int, choices=(0, 1), required=True)
            op.add_argument("--grad-clip", type=float, required=True)
    return p.parse_args(argv)


def run_in_process(argv):
    """One protocol call of this port inside the calling process -> (exit status, stdout, stderr), as
    backends.ports.CmdBackend's runner: the harness's self-tests call it many times without starting a
    process each time. argv is the command line after the program (what follows `python -m
    tools.port_example`); a math bug's patches are undone after the call, so the caller's reference (the
    oracle) is never touched."""
    saved = dict(vars(layers)), adamw.AdamW.step
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(argv))
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    finally:
        vars(layers).update(saved[0])
        adamw.AdamW.step = saved[1]
    return code, stdout.getvalue().encode(), stderr.getvalue().encode()


def main(argv=None):
    args = parse_args(argv)
    if args.bug in BUGS and args.backend != "reference":
        print(f"--bug {args.bug} patches reference/'s numpy math: use it with --backend reference", file=sys.stderr)
        return 2
    if args.chatty:
        print(f"port_example {VERSION}: {args.op} on backend {args.backend}, config read from the checkpoint")
        print("port_example: chatty on stderr too", file=sys.stderr)
    try:
        backend = get_backend(args.backend)
    except BackendUnavailable as e:
        print(f"backend {args.backend} unavailable: {e}", file=sys.stderr)
        return 1
    if args.bug in BUGS:
        BUGS[args.bug][1]()
    if args.op == "info":
        what = f"backend {backend.name}: {backend.description}"
        if args.bug:
            what += f"; deliberate bug {args.bug}: {(BUGS | OUTPUT_BUGS)[args.bug][0]}"
        print(
            json.dumps(
                {
                    "protocol": PROTOCOL_VERSION,
                    "name": "port_example" + (f"[{args.bug}]" if args.bug else ""),
                    "version": VERSION,
                    "precision": args.precision or backend.precision,
                    "deterministic": backend.deterministic and not args.noise,
                    "description": what,
                }
            )
        )
        return 0
    try:
        if args.op == "train":
            op_train(backend, args)
        else:
            op_forward(backend, args, with_backward=args.op == "backward")
    except NotImplementedError as e:
        print(f"unsupported: {e}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
