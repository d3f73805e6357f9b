"""Every implementation the suite can judge, behind one interface, chosen by name.

A backend offers two levels (the design sketch: one backend interface, two levels):

- model level: ``backend.model(config, params, max_B, max_T)`` or ``backend.model_from_checkpoint(path,
  max_B, max_T)`` returns a model handle with
      forward(inputs, targets) -> mean loss (float, or None without targets)
      logits() -> (B,T,Vp) float32 of the last forward
      zero_grad(); backward()
      grads() / params() -> flat float32 arrays of num_parameters in llm.c's order
      set_params(flat)
      update(settings: reference.adamw.AdamWSettings, t) -> global grad norm
      optimizer_state() -> (m, v); set_optimizer_state(m, v)
      close()
- kernel level: ``backend.kernels`` has llm.c's layer functions on numpy arrays, llm.c's argument
  order, sizes read off the arrays, outputs written in place, gradients accumulated with +=
  (the list: KERNEL_NAMES). A backend without some kernel leaves it out; its tests skip, saying so.

Names: reference (numpy fp32), cpu, cuda (strict fp32), cuda-tf32, cuda-bf16 (bf16 mixed precision), and the
port plug-ins
``lib:PATH`` (a shared library with libllmc's or llm.c's ABI) and ``cmd:COMMAND`` (the command-line
protocol of PORTING.md).
"""
import numpy as np

from reference import layers
from reference.adamw import AdamW
from reference.model import GPT2

KERNEL_NAMES = (
    "encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
    "matmul_forward", "matmul_backward", "attention_forward", "attention_backward",
    "gelu_forward", "gelu_backward", "residual_forward", "residual_backward",
    "softmax_forward", "crossentropy_forward", "crossentropy_softmax_backward",
)

BUILTIN_BACKENDS = ("reference", "cpu", "cuda", "cuda-tf32", "cuda-bf16")
# the --backend / --fixture options of pytest (conftest.py) and of tools.conform
BACKEND_OPTION_HELP = (f"backend to judge (repeatable): {', '.join(BUILTIN_BACKENDS)}, lib:PATH or cmd:COMMAND; "
                       "default: every builtin backend")
FIXTURE_OPTION_HELP = ("fixture directory in llm.c's layout (repeatable); default: the committed fixtures "
                       "and fixtures/gpt2_124M where it exists")


class BackendUnavailable(Exception):
    """The backend cannot run here; the message says why (shown as the skip reason)."""


class Backend:
    name = "?"
    precision = "fp32"          # the tolerance class its results are judged by (conformance/tolerances.py)
    kernels = None              # an object with the KERNEL_NAMES methods it has
    description = ""            # library / device / build, for reports

    def model(self, config, params, max_B, max_T):
        raise NotImplementedError

    def model_from_checkpoint(self, path, max_B, max_T):
        raise NotImplementedError

    def has_kernel(self, name):
        return self.kernels is not None and hasattr(self.kernels, name)


# ----------------------------------------------------------------------------- reference (numpy)
class ReferenceKernels:
    """reference.layers with llm.c's in-place, accumulate-into-gradients calling convention."""

    @staticmethod
    def encoder_forward(out, inp, wte, wpe):
        out[...] = layers.encoder_forward(inp, wte, wpe)

    @staticmethod
    def encoder_backward(dwte, dwpe, dout, inp):
        dw, dp = layers.encoder_backward(dout, inp, dwte.shape, dwpe.shape)
        dwte += dw
        dwpe += dp

    @staticmethod
    def layernorm_forward(out, mean, rstd, inp, weight, bias):
        out[...], mean[...], rstd[...] = layers.layernorm_forward(inp, weight, bias)

    @staticmethod
    def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
        di, dw, db = layers.layernorm_backward(dout, inp, weight, mean, rstd)
        dinp += di
        dweight += dw
        dbias += db

    @staticmethod
    def matmul_forward(out, inp, weight, bias):
        out[...] = layers.matmul_forward(inp, weight, bias)

    @staticmethod
    def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
        di, dw, db = layers.matmul_backward(dout, inp, weight, has_bias=dbias is not None)
        dinp += di
        dweight += dw
        if dbias is not None:
            dbias += db

    @staticmethod
    def attention_forward(out, preatt, att, inp, NH):
        out[...], att[...] = layers.attention_forward(inp, NH)

    @staticmethod
    def attention_backward(dinp, dpreatt, datt, dout, inp, att, NH):
        dinp += layers.attention_backward(dout, inp, att, NH)

    @staticmethod
    def gelu_forward(out, inp):
        out[...] = layers.gelu_forward(inp)

    @staticmethod
    def gelu_backward(dinp, inp, dout):
        dinp += layers.gelu_backward(dout, inp)

    @staticmethod
    def residual_forward(out, inp1, inp2):
        out[...] = layers.residual_forward(inp1, inp2)

    @staticmethod
    def residual_backward(dinp1, dinp2, dout):
        d1, d2 = layers.residual_backward(dout)
        dinp1 += d1
        dinp2 += d2

    @staticmethod
    def softmax_forward(probs, logits, V):
        probs[...] = layers.softmax_forward(logits, V)

    @staticmethod
    def crossentropy_forward(losses, probs, targets):
        losses[...] = layers.crossentropy_forward(probs, targets)

    @staticmethod
    def crossentropy_softmax_backward(dlogits, dlosses, probs, targets, V):
        dlogits += layers.crossentropy_softmax_backward(dlosses, probs, targets, V)


class ReferenceModel:
    """The numpy GPT2 behind the model-handle interface."""

    def __init__(self, config, params, max_B, max_T, dtype=np.float32):
        self.config = config
        self.max_B, self.max_T = max_B, max_T
        self.gpt = GPT2(config, params, dtype=dtype)
        self.optimizer = None

    def forward(self, inputs, targets=None):
        inputs = np.asarray(inputs)
        B, T = inputs.shape
        if B > self.max_B or T > self.max_T:
            raise ValueError(f"B={B}, T={T} exceed the model's max_B={self.max_B}, max_T={self.max_T}")
        loss = self.gpt.forward(inputs, targets)
        return None if loss is None else float(loss)

    def logits(self):
        return self.gpt.logits.astype(np.float32)

    def zero_grad(self):
        self.gpt.zero_grad()

    def backward(self):
        self.gpt.backward()

    def grads(self):
        return self.gpt.grads_memory.astype(np.float32)

    def params(self):
        return self.gpt.params_memory.astype(np.float32)

    def set_params(self, flat):
        self.gpt.params_memory[:] = flat

    def update(self, settings, t):
        if self.optimizer is None:
            self.optimizer = AdamW(settings, self.config, self.gpt.dtype)
        self.optimizer.settings = settings
        return self.optimizer.step(self.gpt.params_memory, self.gpt.grads_memory, t)

    def optimizer_state(self):
        if self.optimizer is None:
            zeros = np.zeros(self.config.num_parameters, np.float32)
            return zeros, zeros.copy()
        return self.optimizer.m.astype(np.float32), self.optimizer.v.astype(np.float32)

    def set_optimizer_state(self, m, v):
        from reference.adamw import AdamWSettings
        if self.optimizer is None:
            self.optimizer = AdamW(AdamWSettings(), self.config, self.gpt.dtype)
        self.optimizer.m[:], self.optimizer.v[:] = m, v

    def close(self):
        self.gpt = None


class ReferenceBackend(Backend):
    name = "reference"
    precision = "fp32"
    description = "numpy GPT-2 (reference/), float32"

    def __init__(self):
        self.kernels = ReferenceKernels()

    def model(self, config, params, max_B, max_T):
        return ReferenceModel(config, params, max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        from reference.formats import read_checkpoint
        config, params = read_checkpoint(path)
        return ReferenceModel(config, params, max_B, max_T)


# ----------------------------------------------------------------------------- registry
def get_backend(name):
    """A backend by name; raises BackendUnavailable (with the reason) when it cannot run here."""
    if name == "reference":
        return ReferenceBackend()
    if name in ("cpu", "cuda", "cuda-tf32", "cuda-bf16"):
        from native.binding import native_backend
        return native_backend(name)
    if name.startswith("lib:") or name.startswith("cmd:"):
        from conformance.ports import port_backend
        return port_backend(name)
    raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BUILTIN_BACKENDS)}, lib:PATH or cmd:COMMAND")
