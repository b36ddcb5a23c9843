"""Reading and writing PyTorch-style state dicts as {key: numpy array}.

Formats, chosen by the file extension:
  .safetensors   safetensors (the `safetensors` package; no torch needed)
  .npz           numpy (no extra package)
  .pth .pt .bin  torch.save / torch.load (needs torch: `pip install "evonas_jax[convert]"`)

A checkpoint file may hold the weights under "state_dict" or "model" (the official training
scripts save {"model": ..., "optimizer": ...}) or be the bare dict; `read_state_dict` unwraps it.
"""
from __future__ import annotations

import os

import numpy as np

TORCH_EXTS = (".pth", ".pt", ".bin")
EXTS = (".safetensors", ".npz") + TORCH_EXTS
_WRAPPERS = ("state_dict", "model", "module")


def _ext(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in EXTS:
    raise ValueError(f"{path}: unknown state-dict format {ext!r}; allowed extensions: {EXTS}")
  return ext


def _need_torch(path: str):
  try:
    import torch
  except ImportError:
    raise ValueError(
        f"{path}: reading/writing a torch file needs PyTorch (pip install \"evonas_jax[convert]\" "
        "or torch). Without torch, convert the file once with `python -c \"import torch, "
        "safetensors.torch as st; st.save_file(torch.load('in.pth', map_location='cpu')['model'],"
        " 'out.safetensors')\"` where torch is installed, or use .safetensors / .npz.") from None
  return torch


def unwrap(obj, path: str = "<state dict>") -> dict:
  """The {key: tensor} dict inside a loaded checkpoint object (see the module docstring)."""
  for _ in range(3):
    if isinstance(obj, dict) and not any(_is_array(v) for v in obj.values()):
      inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], dict)), None)
      if inner is None:
        raise ValueError(f"{path}: no weights found: the file is a dict of {sorted(obj)[:8]} "
                         f"without array values or any of the keys {_WRAPPERS}; is it an EvoNAS / "
                         "VSSD checkpoint?")
      obj = inner
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  return obj


def _is_array(v) -> bool:
  return hasattr(v, "shape") and hasattr(v, "dtype")


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):   # torch.Tensor: bfloat16/half have no lossless numpy path but float32
    v = v.detach().cpu()
    if str(v.dtype) in ("torch.bfloat16", "torch.float16"):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{key: array} of a state-dict file; non-array entries (e.g. a stored epoch) are dropped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--from {path}: no such file")
  ext = _ext(path)
  if ext == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ValueError(f"{path}: reading .safetensors needs the `safetensors` package "
                       "(pip install \"evonas_jax[convert]\")") from None
    try:
      raw = load_file(path)
    except Exception as e:   # noqa: BLE001 - a truncated / foreign file: name it
      raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") \
          from None
  elif ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    except Exception as e:   # noqa: BLE001
      raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
  else:
    torch = _need_torch(path)
    raw = unwrap(torch.load(path, map_location="cpu", weights_only=False), path)
  return {k: _to_numpy(v) for k, v in raw.items() if _is_array(v)}


def write_state_dict(path: str, sd: dict[str, np.ndarray], *, overwrite: bool = False) -> None:
  """Writes {key: array} in the format of `path`'s extension; refuses to overwrite unless asked."""
  ext = _ext(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"--to {path} exists; refusing to overwrite it (pass --overwrite)")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (BatchNorm's
  # num_batches_tracked) into shape (1,), which torch's load_state_dict rejects.
  sd = {k: np.array(v, order="C") for k, v in sd.items()}
  if ext == ".safetensors":
    try:
      from safetensors.numpy import save_file
    except ImportError:
      raise ValueError(f"{path}: writing .safetensors needs the `safetensors` package "
                       "(pip install \"evonas_jax[convert]\")") from None
    save_file(sd, path)
  elif ext == ".npz":
    np.savez(path, **sd)
  else:
    torch = _need_torch(path)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
