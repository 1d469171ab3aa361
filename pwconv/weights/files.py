"""Reading weight files into ``{name: numpy array}``: .safetensors, and PyTorch's .pth/.pt/.bin.

Nothing is downloaded: the user passes a file they fetched by hand. PyTorch files are read by PyTorch
(when installed) with ``weights_only=True``, whose unpickler only rebuilds tensors and plain containers:
a file whose pickle would import or call anything else is refused before anything runs. pwconv never
unpickles a file itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

SAFETENSORS = (".safetensors",)
TORCH = (".pth", ".pt", ".bin", ".ckpt")

# Keys under which training checkpoints keep the model's state dict (timm, Lightning, torchvision
# references); the first present one is used.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "module")
# How PyTorch's weights-only unpickler reports bytes that are not a pickle (a foreign file); any
# other refusal is a pickle asking for a global or an operation beyond tensors and containers.
NOT_A_PICKLE = ("Unsupported operand", "invalid load key")


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict from ``path``: {tensor name: numpy array}, in the file's order.

  Args:
    path: a ``.safetensors`` file (read with the ``safetensors`` package), or a PyTorch
      ``.pth``/``.pt``/``.bin``/``.ckpt`` file (read with ``torch.load(..., weights_only=True)``; needs
      PyTorch). A PyTorch checkpoint dict holding the model under "state_dict", "model",
      "model_state_dict" or "module" gives that dict; a "module." prefix on every name (DataParallel)
      is removed.

  Returns:
    The tensors as numpy arrays (bfloat16 as ``ml_dtypes.bfloat16``).

  Raises:
    FileNotFoundError: no such file. ValueError naming the file: an unknown extension, a corrupt,
    truncated or foreign file, a pickle that would run code, or no tensors in it. ImportError: a
    PyTorch file without PyTorch installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights.load: no such file: {path!r}")
  ext = os.path.splitext(path)[1].lower()
  if ext in SAFETENSORS:
    tensors = _load_safetensors(path)
  elif ext in TORCH:
    tensors = _load_torch(path)
  else:
    raise ValueError(f"weights.load: {path!r} has extension {ext!r}; expected one of "
                     f"{list(SAFETENSORS + TORCH)}")
  if not tensors:
    raise ValueError(f"weights.load: {path!r} holds no tensors")
  return tensors


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(path, framework="numpy") as f:
      return {name: f.get_tensor(name) for name in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"weights.load: {path!r} is not a readable .safetensors file (corrupt, "
                     f"truncated or another format): {e}") from None


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(f"weights.load: reading {path!r} needs PyTorch (pip install torch; the CPU "
                      "build is enough), or convert the file to .safetensors") from None
  import pickle
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    reason = _unpickler_reason(e)
    if reason.startswith(NOT_A_PICKLE):  # bytes that are no pickle at all: another format
      raise ValueError(f"weights.load: {path!r} is not a readable PyTorch file (corrupt, truncated "
                       f"or another format): {reason}") from None
    raise ValueError(f"weights.load: refused {path!r}: its pickle needs more than tensors and plain "
                     f"containers, and pwconv only loads with weights_only=True (nothing in it was "
                     f"run): {reason}") from None
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise ValueError(f"weights.load: {path!r} is not a readable PyTorch file (corrupt, truncated or "
                     f"another format): {_first_line(e)}") from None
  return _state_dict(obj, path)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  if text:
    return text.splitlines()[0]
  return "the file ends early" if isinstance(error, EOFError) else type(error).__name__


def _unpickler_reason(error: BaseException) -> str:
  """The weights-only unpickler's own reason ("Unsupported global: GLOBAL os.system ..."), without
  PyTorch's advice around it."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
  _, found, reason = text.partition("WeightsUnpickler error:")
  lines = [line.strip() for line in (reason if found else text).splitlines() if line.strip()]
  return lines[0].split(". Please use")[0] if lines else type(error).__name__


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and not any(_is_tensor(v) for v in obj.values()):
    for key in CHECKPOINT_KEYS:
      if isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f"weights.load: {path!r} holds a {type(obj).__name__}, not a state dict "
                     "(a mapping of names to tensors)")
  tensors = {str(k): to_numpy(v) for k, v in obj.items() if _is_tensor(v)}
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return tensors


def _is_tensor(value: Any) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def to_numpy(value: Any) -> np.ndarray:
  """A numpy array of a numpy array, a JAX array or a PyTorch tensor (bfloat16 kept as bfloat16)."""
  if hasattr(value, "detach"):  # a torch.Tensor: numpy() has no bfloat16
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      import ml_dtypes
      import torch
      return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
  return np.asarray(value)
