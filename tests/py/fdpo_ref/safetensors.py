"""safetensors read/write with json + struct only (no safetensors package), as the format
spec says: 8-byte little-endian header length, JSON header, raw little-endian data."""
import json
import struct

import numpy as np
import torch

_DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64,
       "U8": np.uint8, "F64": np.float64}


def save(path, tensors, metadata=None, dtype="F32"):
    """tensors: dict name -> torch tensor or numpy array. dtype: F32, F16 or BF16 for floats."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            if t.is_floating_point():
                if dtype == "BF16":
                    raw = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
                    dt = "BF16"
                else:
                    npdt = np.float16 if dtype == "F16" else np.float32
                    raw = t.numpy().astype(npdt).tobytes()
                    dt = dtype if dtype == "F16" else "F32"
                shape = list(t.shape)
            else:
                a = t.numpy()
                raw, shape = a.tobytes(), list(a.shape)
                dt = {np.int32: "I32", np.int64: "I64", np.uint8: "U8"}[a.dtype.type]
        else:
            a = np.ascontiguousarray(t)
            inv = {v: k for k, v in _DT.items()}
            dt, raw, shape = inv[a.dtype.type], a.tobytes(), list(a.shape)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load(path):
    """Returns (dict name -> float32/int numpy array, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = body[b:e]
        if info["dtype"] == "BF16":
            a = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = a.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=_DT[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out, meta
