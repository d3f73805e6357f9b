"""The numpy reference (reference/, float32) behind the backend interface: the backend named "reference"."""

import numpy as np

from backends.base import Backend
from reference import layers
from reference.adamw import AdamW, AdamWSettings
from reference.formats import read_checkpoint, write_checkpoint
from reference.model import GPT2


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
        if self.optimizer is None:
            self.optimizer = AdamW(AdamWSettings(), self.config, self.gpt.dtype)
        self.optimizer.m[:], self.optimizer.v[:] = m, v

    def save_checkpoint(self, path, dtype="fp32"):
        write_checkpoint(path, self.config, self.gpt.params_memory.astype(np.float32), dtype)

    def close(self):
        self.gpt = None


class ReferenceBackend(Backend):
    name = "reference"
    precision = "fp32"
    deterministic = True
    description = "numpy GPT-2 (reference/), float32"

    def __init__(self):
        self.kernels = ReferenceKernels()

    def unsupported(self, feature):
        if feature == "model_config":
            return "the reference model is built from the configuration it is given: nothing of its own to report"
        return None

    def model(self, config, params, max_B, max_T):
        return ReferenceModel(config, params, max_B, max_T)

    def model_from_checkpoint(self, path, max_B, max_T):
        config, params = read_checkpoint(path)
        return ReferenceModel(config, params, max_B, max_T)
