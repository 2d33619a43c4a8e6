"""A plain-PyTorch Llama (LlamaForCausalLM; Qwen2's q/k/v biases) written from the published
architecture for fdpo's tests: RMSNorm, rotary embeddings in Hugging Face's rotate-half
convention (optional llama3 frequency scaling), grouped-query attention, SwiGLU MLP, tied
or untied LM head. Parameters are a dict of Hugging Face tensor names -> tensors in
nn.Linear layout [out, in]. The mask follows fdpo's packed-batch rule: token i attends to
j <= i when branch[j] == 0 or branch[j] == branch[i]."""
import json
import math
import os

import numpy as np
import torch

from . import safetensors as st


class Llama:
    def __init__(self, vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
                 num_key_value_heads, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=False, qkv_bias=False, o_bias=False, mlp_bias=False, rope_scaling=None,
                 model_type="llama", seed=0, dtype=torch.float64):
        self.cfg = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                        rms_norm_eps=rms_norm_eps, rope_theta=rope_theta, tie_word_embeddings=tie_word_embeddings,
                        rope_scaling=rope_scaling, model_type=model_type, hidden_act="silu")
        if model_type == "llama":
            self.cfg["attention_bias"] = qkv_bias
            self.cfg["mlp_bias"] = mlp_bias
        self.qkv_bias, self.o_bias, self.mlp_bias = qkv_bias, o_bias, mlp_bias
        self.hd = hidden_size // num_attention_heads
        g = torch.Generator().manual_seed(seed)
        C, F, V = hidden_size, intermediate_size, vocab_size
        QD, KD = num_attention_heads * self.hd, num_key_value_heads * self.hd
        p = {}

        def w(*shape, sd=0.3):
            return (torch.randn(*shape, generator=g, dtype=torch.float64) * sd).float().to(dtype)

        p["model.embed_tokens.weight"] = w(V, C, sd=1.0)
        for i in range(num_hidden_layers):
            pre = f"model.layers.{i}."
            p[pre + "input_layernorm.weight"] = 1 + w(C, sd=0.1)
            p[pre + "post_attention_layernorm.weight"] = 1 + w(C, sd=0.1)
            for name, o, inp, bias in [("self_attn.q_proj", QD, C, qkv_bias), ("self_attn.k_proj", KD, C, qkv_bias),
                                       ("self_attn.v_proj", KD, C, qkv_bias), ("self_attn.o_proj", C, QD, o_bias),
                                       ("mlp.gate_proj", F, C, mlp_bias), ("mlp.up_proj", F, C, mlp_bias),
                                       ("mlp.down_proj", C, F, mlp_bias)]:
                p[pre + name + ".weight"] = w(o, inp, sd=1 / math.sqrt(inp))
                if bias:
                    p[pre + name + ".bias"] = w(o, sd=0.1)
        p["model.norm.weight"] = 1 + w(C, sd=0.1)
        if not tie_word_embeddings:
            p["lm_head.weight"] = w(V, C, sd=1 / math.sqrt(C))
        self.p = {k: v.clone().requires_grad_(True) for k, v in p.items()}

    def inv_freq(self):
        c = self.cfg
        hd = self.hd
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        rs = c["rope_scaling"]
        if rs:
            factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            scaled = torch.where(wavelen > old / lo, inv / factor, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
            inv = torch.where(medium, smoothed, scaled)
        return inv

    @staticmethod
    def rms(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def linear(self, x, name):
        y = self.matmul_t(x, self.p[name + ".weight"])
        b = self.p.get(name + ".bias")
        return y if b is None else y + b

    def forward(self, tokens, pos=None, branch=None):
        return self.lm_head(self.hidden(tokens, pos, branch))

    def lm_head(self, x):
        head = self.p["model.embed_tokens.weight"] if self.cfg["tie_word_embeddings"] else self.p["lm_head.weight"]
        return self.matmul_t(x, head)

    @staticmethod
    def matmul_t(x, w):
        """x @ w^T: every linear layer and the LM head go through here (the bf16 tests
        replace it with a rounding version)"""
        return x @ w.T

    def hidden(self, tokens, pos=None, branch=None):
        """final hidden states (after model.norm) [T, C]"""
        c = self.cfg
        T = len(tokens)
        tokens = torch.as_tensor(tokens)
        pos = torch.arange(T) if pos is None else torch.as_tensor(pos)
        NH, NKV, hd = c["num_attention_heads"], c["num_key_value_heads"], self.hd
        ang = pos.double()[:, None] * self.inv_freq()[None, :]
        dt = self.p["model.embed_tokens.weight"].dtype  # the angles in float64, the tables in the model's dtype
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1).to(dt), torch.cat([ang.sin(), ang.sin()], -1).to(dt)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = j <= i
        if branch is not None:
            br = torch.as_tensor(branch)
            allowed = allowed & ((br[None, :] == 0) | (br[None, :] == br[:, None]))
        x = self.p["model.embed_tokens.weight"][tokens]
        eps = c["rms_norm_eps"]
        for l in range(c["num_hidden_layers"]):
            pre = f"model.layers.{l}."
            h = self.rms(x, self.p[pre + "input_layernorm.weight"], eps)
            q = self.linear(h, pre + "self_attn.q_proj").view(T, NH, hd).transpose(0, 1)
            k = self.linear(h, pre + "self_attn.k_proj").view(T, NKV, hd).transpose(0, 1)
            v = self.linear(h, pre + "self_attn.v_proj").view(T, NKV, hd).transpose(0, 1)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            k = k.repeat_interleave(NH // NKV, dim=0)
            v = v.repeat_interleave(NH // NKV, dim=0)
            a = self.attend(q, k, v, allowed, hd)
            x = x + self.linear(a.transpose(0, 1).reshape(T, NH * hd), pre + "self_attn.o_proj")
            h = self.rms(x, self.p[pre + "post_attention_layernorm.weight"], eps)
            gate = self.linear(h, pre + "mlp.gate_proj")
            x = x + self.linear(torch.nn.functional.silu(gate) * self.linear(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
        return self.rms(x, self.p["model.norm.weight"], eps)

    @staticmethod
    def attend(q, k, v, allowed, hd):
        """softmax(mask(q k^T / sqrt(hd))) v per head (a subclass may change how it is computed)"""
        s = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        return torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1) @ v

    def save_hf(self, d, shards=1):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(self.cfg, f)
        tensors = {k: v.detach().float() for k, v in self.p.items()}
        if shards == 1:
            st.save(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
            return
        names = sorted(tensors)
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            st.save(os.path.join(d, fname), {k: tensors[k] for k in part}, {"format": "pt"})
            weight_map.update({k: fname for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
