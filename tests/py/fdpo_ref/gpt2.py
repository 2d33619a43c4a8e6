"""GPT-2 as Hugging Face's GPT2LMHeadModel computes it, written with plain PyTorch ops:
the independent reference for fdpo's model tests (transformers is not a Debian package)."""
import json
import math
import os

import torch
import torch.nn.functional as F

from . import safetensors as st

LAYER_TENSORS = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]


class GPT2(torch.nn.Module):
    def __init__(self, vocab_size, n_positions, n_embd, n_layer, n_head, eps=1e-5, seed=0):
        super().__init__()
        self.cfg = dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, layer_norm_epsilon=eps)
        g = torch.Generator().manual_seed(seed)
        C = n_embd
        p = {}
        p["wte.weight"] = torch.randn(vocab_size, C, generator=g) * 0.02
        p["wpe.weight"] = torch.randn(n_positions, C, generator=g) * 0.02
        for i in range(n_layer):
            for name, shape in [("ln_1.weight", [C]), ("ln_1.bias", [C]),
                                ("attn.c_attn.weight", [C, 3 * C]), ("attn.c_attn.bias", [3 * C]),
                                ("attn.c_proj.weight", [C, C]), ("attn.c_proj.bias", [C]),
                                ("ln_2.weight", [C]), ("ln_2.bias", [C]),
                                ("mlp.c_fc.weight", [C, 4 * C]), ("mlp.c_fc.bias", [4 * C]),
                                ("mlp.c_proj.weight", [4 * C, C]), ("mlp.c_proj.bias", [C])]:
                # random (not GPT-2-init) values everywhere so that every term is exercised
                scale = 0.1 if name.endswith("bias") else 0.02 * 3
                base = 1.0 if name.startswith("ln") and name.endswith("weight") else 0.0
                p[f"h.{i}.{name}"] = base + torch.randn(*shape, generator=g) * scale
        p["ln_f.weight"] = 1.0 + torch.randn(C, generator=g) * 0.1
        p["ln_f.bias"] = torch.randn(C, generator=g) * 0.1
        self.p = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v) for k, v in p.items()})

    def param(self, name):
        return self.p[name.replace(".", "__")]

    def named(self):
        """HF tensor names ("transformer." prefix) -> parameters."""
        return {"transformer." + k.replace("__", "."): v for k, v in self.p.items()}

    def forward(self, tokens, pos=None, mask=None, hidden=False):
        """tokens [T] long; pos [T] (default arange); mask [T,T] bool (True = may attend,
        default causal). Returns logits [T, V], or with hidden=True the final hidden states
        after ln_f [T, C] (what GPT2ForSequenceClassification's score head reads). One
        sequence at a time: the reference is slow and obvious on purpose."""
        c = self.cfg
        T, C, H = tokens.shape[0], c["n_embd"], c["n_head"]
        hs = C // H
        if pos is None:
            pos = torch.arange(T)
        if mask is None:
            mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        x = self.param("wte.weight")[tokens] + self.param("wpe.weight")[pos]
        eps = c["layer_norm_epsilon"]
        for i in range(c["n_layer"]):
            P = lambda n: self.param(f"h.{i}.{n}")
            h = F.layer_norm(x, (C,), P("ln_1.weight"), P("ln_1.bias"), eps)
            qkv = h @ P("attn.c_attn.weight") + P("attn.c_attn.bias")
            q, k, v = qkv.split(C, dim=-1)
            q = q.view(T, H, hs).transpose(0, 1)
            k = k.view(T, H, hs).transpose(0, 1)
            v = v.view(T, H, hs).transpose(0, 1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
            att = att.masked_fill(~mask, float("-inf"))
            att = torch.softmax(att, dim=-1)
            y = (att @ v).transpose(0, 1).reshape(T, C)
            x = x + y @ P("attn.c_proj.weight") + P("attn.c_proj.bias")
            h = F.layer_norm(x, (C,), P("ln_2.weight"), P("ln_2.bias"), eps)
            h = F.gelu(h @ P("mlp.c_fc.weight") + P("mlp.c_fc.bias"), approximate="tanh")
            x = x + h @ P("mlp.c_proj.weight") + P("mlp.c_proj.bias")
        x = F.layer_norm(x, (C,), self.param("ln_f.weight"), self.param("ln_f.bias"), eps)
        if hidden:
            return x
        return x @ self.param("wte.weight").t()

    def save_hf(self, directory, prefix="transformer.", dtype="F32", extra=None, config_extra=None):
        """Write config.json + model.safetensors as Hugging Face lays out GPT-2."""
        os.makedirs(directory, exist_ok=True)
        cfg = dict(self.cfg, model_type="gpt2", activation_function="gelu_new",
                   architectures=["GPT2LMHeadModel"], n_ctx=self.cfg["n_positions"])
        if config_extra:
            cfg.update(config_extra)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        tensors = {prefix + k.replace("__", "."): v.detach() for k, v in self.p.items()}
        if extra:
            tensors.update(extra)
        st.save(os.path.join(directory, "model.safetensors"), tensors, dtype=dtype,
                metadata={"format": "pt"})

    def load_hf(self, directory):
        t, _ = st.load(os.path.join(directory, "model.safetensors"))
        with torch.no_grad():
            for k in self.p.keys():
                name = k.replace("__", ".")
                arr = t.get("transformer." + name, t.get(name))
                self.p[k].copy_(torch.from_numpy(arr))


def attention_backward_bf16(q, k, v, dy, mask, scale, lse, out):
    """fdpo's attention backward under --precision bf16 (DESIGN: bf16 matmul inputs, fp32
    everything else), in the tensors' dtype: per head [.., T, hs], mask [T, T] True where a
    query may attend, lse [.., T, 1] and out of the exact forward.
      P = exp(scale bf16(q) bf16(k)^T - lse);  D = dy . out
      dv = bf16(P)^T bf16(dy);  dS = P (bf16(dy) bf16(v)^T - D)
      dq = scale bf16(dS) bf16(k);  dk = scale bf16(dS)^T bf16(q)
    bf16() rounds to nearest even (torch's float -> bfloat16, as fdpo_bf16_round)."""
    def bf16(t):
        return t.to(torch.bfloat16).to(t.dtype)

    D = (dy * out).sum(-1, keepdim=True)
    S = (bf16(q) @ bf16(k).transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    P = torch.exp(S - lse)
    dv = bf16(P).transpose(-1, -2) @ bf16(dy)
    dS = P * (bf16(dy) @ bf16(v).transpose(-1, -2) - D)
    dq = scale * bf16(dS) @ bf16(k)
    dk = scale * bf16(dS).transpose(-1, -2) @ bf16(q)
    return dq, dk, dv
