"""GPT-2 in PyTorch, nanoGPT-style, built from our flat llm.c-layout parameters: the baseline and cross-check.

The one PyTorch GPT-2 of the project (optional: needs `pip install torch==2.13.0`, the extra [torch]).
Pre-LN blocks, tanh GELU, causal self-attention, the lm head tied to wte over all Vp rows and the
loss over the first V columns only, as llm.c. nn.Linear stores its weight (out, in) like llm.c, so
the flat array maps onto the modules without transposes; the per-layer llm.c tensors (qkvw is
(L,3C,C)) are the stacks of the blocks' tensors.

    model = from_flat(config, flat, dtype=torch.float64)
    loss = model(inputs, targets); loss.backward(); grads = flat_grads(model)
    optimizer = AdamW(model, settings); norm = optimizer.step(t)
"""

import math

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError as e:  # keep the reason: a broken install reads differently from a missing one
    raise ImportError(
        f"reference.torch_gpt2 needs PyTorch ({e}): pip install torch==2.13.0 "
        "(or the project's extra: pip install -e '.[torch]')"
    ) from e

from reference.model import split_params

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CausalSelfAttention(nn.Module):
    def __init__(self, config, flash):
        super().__init__()
        C = config.channels
        self.n_head = config.num_heads
        self.flash = flash
        self.c_attn = nn.Linear(C, 3 * C)  # qkvw, qkvb
        self.c_proj = nn.Linear(C, C)  # attprojw, attprojb

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B,T,C) -> (B,NH,T,hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.channels
        self.c_fc = nn.Linear(C, 4 * C)  # fcw, fcb
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * C, C)  # fcprojw, fcprojb

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config, flash):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.channels)  # eps 1e-5, biased variance: llm.c's layernorm
        self.attn = CausalSelfAttention(config, flash)
        self.ln_2 = nn.LayerNorm(config.channels)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, config, flash=False):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.channels)
        self.wpe = nn.Embedding(config.max_seq_len, config.channels)
        self.h = nn.ModuleList(Block(config, flash) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.channels)

    def forward(self, idx, targets=None):
        """idx, targets (B,T) int64 -> mean loss over the B*T tokens (None without targets); self.logits (B,T,Vp)."""
        B, T = idx.size()
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        self.logits = x @ self.wte.weight.T  # the lm head is wte itself, all Vp rows
        if targets is None:
            return None
        V = self.config.vocab_size
        return F.cross_entropy(self.logits[..., :V].reshape(-1, V), targets.reshape(-1))


def _llmc_tensors(model):
    """llm.c name -> the list of torch tensors whose stack is that llm.c tensor, in llm.c's order."""
    h = model.h
    return {
        "wte": [model.wte.weight],
        "wpe": [model.wpe.weight],
        "ln1w": [b.ln_1.weight for b in h],
        "ln1b": [b.ln_1.bias for b in h],
        "qkvw": [b.attn.c_attn.weight for b in h],
        "qkvb": [b.attn.c_attn.bias for b in h],
        "attprojw": [b.attn.c_proj.weight for b in h],
        "attprojb": [b.attn.c_proj.bias for b in h],
        "ln2w": [b.ln_2.weight for b in h],
        "ln2b": [b.ln_2.bias for b in h],
        "fcw": [b.mlp.c_fc.weight for b in h],
        "fcb": [b.mlp.c_fc.bias for b in h],
        "fcprojw": [b.mlp.c_proj.weight for b in h],
        "fcprojb": [b.mlp.c_proj.bias for b in h],
        "lnfw": [model.ln_f.weight],
        "lnfb": [model.ln_f.bias],
    }


def _as_torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def from_flat(config, flat, dtype=torch.float32, device="cpu", flash=False):
    """A GPT2 module holding the num_parameters values of `flat` (llm.c's order), in dtype on device."""
    flat = np.asarray(flat)
    if flat.shape != (config.num_parameters,):
        raise ValueError(f"flat: expected {config.num_parameters} parameters for {config}, got shape {flat.shape}")
    model = GPT2(config, flash).to(device=device, dtype=_as_torch_dtype(dtype))
    views = split_params(flat, config)
    with torch.no_grad():
        for name, tensors in _llmc_tensors(model).items():
            source = views[name].reshape((len(tensors),) + tuple(tensors[0].shape))
            for tensor, value in zip(tensors, source, strict=False):
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))  # copy_ casts to the model dtype
    return model


def _flatten(model, pick):
    parts = []
    for tensors in _llmc_tensors(model).values():
        for tensor in tensors:
            value = pick(tensor)
            value = torch.zeros_like(tensor) if value is None else value.detach()
            out_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
            parts.append(value.to("cpu", out_dtype).numpy().ravel())
    return np.concatenate(parts)


def flat_grads(model):
    """The gradients as one numpy array in llm.c's order; wte's holds both uses (embedding and lm head)."""
    return _flatten(model, lambda t: t.grad)


def flat_params(model):
    """The parameters as one numpy array in llm.c's order."""
    return _flatten(model, lambda t: t)


class AdamW:
    """reference.adamw.AdamW on a torch GPT2: torch.optim.AdamW with llm.c's two weight-decay conventions
    (decay_all: every parameter; else the 2-D tensors only) and the reference's global-norm clipping
    (scale by clip/norm when norm > clip; torch's clip_grad_norm_ would add 1e-6 to the norm)."""

    def __init__(self, model, settings):
        self.model = model
        self.settings = settings
        params = list(model.parameters())  # wte once, though the lm head uses it too
        if settings.decay_all:
            groups = [{"params": params, "weight_decay": settings.weight_decay}]
        else:
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
        self.optimizer = torch.optim.AdamW(
            groups, lr=settings.learning_rate, betas=(settings.beta1, settings.beta2), eps=settings.eps
        )

    def step(self, learning_rate=None):
        """One update from the accumulated .grad; returns the global grad norm before clipping.
        The step count t is torch's own (1 on the first call), as reference AdamW.step's t."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # the norm of the per-tensor norms, as clip_grad_norm_: no float64 copy of the gradients
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        clip = self.settings.grad_clip
        if clip > 0 and norm > clip:
            for g in grads:
                g.mul_(clip / norm)
        lr = self.settings.learning_rate if learning_rate is None else learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return norm

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=False)
