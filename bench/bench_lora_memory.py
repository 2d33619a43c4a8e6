#!/usr/bin/python3
"""Peak RSS of a loop command with full weights vs LoRA (docs/lora.md, "Measured").

A random-init Llama checkpoint (default a small shape; --smollm: SmolLM2-135M's shape, 30
layers, hidden 576, 9 heads, 3 KV heads, intermediate 1536, vocab 49152, tied) with fdpo's
byte tokenizer; `fdpo rl` (RLOO, --reward length) for --steps steps, once with full weights
(policy + gradients + two AdamW moments + a second copy of the weights as the reference) and
once with --lora-r 16 --lora-alpha 32 on q_proj,k_proj,v_proj,o_proj (the base once, the
reference = the base with adapters off). Each run is its own process started from a small
parent; peak RSS is the child's ru_maxrss from wait4. Memory does not depend on machine load.

    /usr/bin/python3 bench/bench_lora_memory.py [--smollm] [--cmd rl|online-step]
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import interleave  # noqa: E402  (interleave.count: the --steps and --threads check)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py"))
FDPO = os.environ.get("FDPO_BIN", os.path.join(HERE, "..", "build", "fdpo"))

PROBE = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), ru.ru_maxrss)
"""


def peak_mib(args):
    r = subprocess.run(["/usr/bin/python3", "-c", PROBE, FDPO, *map(str, args)], capture_output=True, text=True)
    code, kib = r.stdout.split()[-2:]
    if code != "0":
        sys.exit(r.stdout + r.stderr)
    return int(kib) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm", action="store_true", help="SmolLM2-135M's shape")
    ap.add_argument("--cmd", default="rl", choices=["rl", "online-step"])
    ap.add_argument("--steps", type=interleave.count, default=2)
    ap.add_argument("--threads", type=interleave.count, default=2)
    a = ap.parse_args()
    import torch
    from dpo_common import save_byte_tokenizer
    from fdpo_ref.llama import Llama
    shape = (dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3) if a.smollm else
             dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4))
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        m = Llama(**shape, tie_word_embeddings=True, seed=1, dtype=torch.float32)
        m.save_hf(base)
        save_byte_tokenizer(base)
        del m
        prompts = os.path.join(tmp, "p.txt")
        with open(prompts, "w") as f:
            f.write("".join(f"prompt {i}:\n" for i in range(8)))
        cmd = (["rl", "--prompts-per-step", 2, "--n", 2] if a.cmd == "rl" else
               ["online", "--mode", "step", "--prompts-per-round", 2, "--n", 2])
        common = [*cmd, "--model", base, "--data", prompts, "--reward", "length", "--steps", a.steps,
                  "--max-new-tokens", 16, "--threads", a.threads, "--quiet"]
        full = peak_mib([*common, "--out", os.path.join(tmp, "full")])
        lora = peak_mib([*common, "--out", os.path.join(tmp, "lora"), "--lora-r", 16, "--lora-alpha", 32,
                         "--lora-targets", "q_proj,k_proj,v_proj,o_proj"])
        size_mib = os.path.getsize(os.path.join(base, "model.safetensors")) / 2 ** 20
        print(f"shape: {'SmolLM2-135M' if a.smollm else 'small'} {shape}")
        print(f"model.safetensors: {size_mib:.1f} MiB (one fp32 copy)")
        print(f"fdpo {a.cmd}, {a.steps} steps: peak RSS full {full:.1f} MiB, LoRA r=16 {lora:.1f} MiB "
              f"({100 * lora / full:.1f} % of full)")


if __name__ == "__main__":
    main()
