"""Local checkpoints: find them, estimate their memory before loading, load a causal LM and its tokenizer.

A checkpoint is a folder with a Hugging Face ``config.json`` and weights (``*.safetensors`` or ``*.bin``), loaded
with ``transformers`` (``local_files_only=True``: nothing is ever downloaded). A folder without ``config.json``
whose sub-folders are checkpoints is a trajectory: its checkpoints in order of the step number in their names.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from spamlang.errors import SpamLangError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
#: config fields that describe where or by what a checkpoint was written, not the model
_VOLATILE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")


#: a training step in a checkpoint folder's name: ``step1000``, ``checkpoint-1000``, ``global_step1000``,
#: ``iter_0001000``, ``ckpt-1000`` (alone or at the end of a longer name), or a name that is only digits
_STEP = re.compile(r"(?:^|[-_.])(?:step|checkpoint|ckpt|iter|iteration|global[-_]?step)[-_]?(\d+)$|^(\d+)$", re.I)


def _step(path: Path) -> tuple:
    found = _STEP.search(path.name)
    return (int(found.group(1) or found.group(2)) if found else -1, path.name)


def expand(paths: list[str | Path]) -> list[Path]:
    """Checkpoint folders: each path itself, or the checkpoint sub-folders of a trajectory folder (by step)."""
    found = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            found.append(path)
        elif path.is_dir() and (subs := [p for p in path.iterdir() if (p / "config.json").is_file()]):
            found.extend(sorted(subs, key=_step))
        elif not path.exists():
            raise SpamLangError(f"model folder not found: {path}")
        elif path.is_file() and path.suffix in (".pt", ".json"):
            raise SpamLangError(f"{path}: a suite run, not a Hugging Face checkpoint folder; its gradient diagnostics "
                                f"are 'spamlang probe {path}'")
        else:
            raise SpamLangError(f"{path}: not a checkpoint (no config.json in it or in its sub-folders)")
    return found


def step_of(path: Path) -> int | None:
    """The training step in a checkpoint folder's name (``step1000``, ``checkpoint-1000``, ...: see ``_STEP``), or
    None (``tiny-gpt2`` and ``pythia-160m`` name no step)."""
    step = _step(path)[0]
    return step if step >= 0 else None


def read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpamLangError(f"{path / 'config.json'}: not readable as JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SpamLangError(f"{path}: not a Hugging Face checkpoint (config.json has no model_type)")
    return config


def config_hash(config: dict) -> str:
    """sha256 of the model's configuration (canonical JSON, without the fields that name its origin)."""
    kept = {k: v for k, v in config.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _safetensors_elements(path: Path) -> int:
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(_product(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _product(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def parameter_count(path: Path) -> int:
    """Parameters stored in the checkpoint, read from the safetensors headers (no weights are loaded); for
    ``*.bin`` files, their size in bytes / 2 (16-bit storage assumed; an overestimate for 32-bit files)."""
    tensors = list(path.glob("*.safetensors"))
    if tensors:
        try:
            return sum(map(_safetensors_elements, tensors))
        except (OSError, ValueError, KeyError, struct.error) as exc:
            raise SpamLangError(f"{path}: unreadable safetensors header ({exc})") from None
    bins = list(path.glob("*.bin"))
    if not bins:
        raise SpamLangError(f"{path}: no weights (*.safetensors or *.bin)")
    return sum(p.stat().st_size for p in bins) // 2


def available_memory(device: torch.device) -> int:
    """Bytes free for this process: the accelerator's free memory, or MemAvailable from /proc/meminfo."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass
class Loaded:
    """A loaded causal LM with its output embedding W (V, D) and bias (V,) or None."""

    model: torch.nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    tied: bool
    max_positions: int | None


def _quiet_transformers() -> None:
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> Loaded:
    """Load the causal LM in ``path``; SpamLangError if it cannot be, or if it has no trained output embedding."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise SpamLangError("measuring a Hugging Face checkpoint needs transformers: pip install 'spamlang[hf]'") \
            from None
    _quiet_transformers()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, info = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                               output_loading_info=True)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError, ... for a folder it cannot load
        raise SpamLangError(f"{path}: cannot load a causal LM ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    model.to(device).eval()
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None or head.weight.dim() != 2:
        raise SpamLangError(f"{path}: {type(model).__name__} has no output embedding (LM head)")
    name = next((n for n, p in model.named_parameters() if p is head.weight), None)
    if name in info.get("missing_keys", ()):
        raise SpamLangError(f"{path}: the checkpoint has no output embedding ({name} is missing from its weights)")
    bias = getattr(head, "bias", None)
    for what, tensor in (("output embedding", head.weight), ("output bias", bias)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise SpamLangError(f"{path}: its {what} ({name or 'lm_head'}) holds non-finite values (NaN or inf); the "
                                f"checkpoint is damaged or diverged, nothing to measure")
    inputs = model.get_input_embeddings()
    tied = inputs is not None and inputs.weight is head.weight
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return Loaded(model, head.weight.detach(), None if getattr(head, "bias", None) is None else head.bias.detach(),
                  tied, getattr(config, "max_position_embeddings", None))


def load_tokenizer(path: Path, override: str | Path | None):
    """The tokenizer of the checkpoint (``override``, or ``path``, or for a trajectory its parent folder)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SpamLangError("tokenizing text needs transformers: pip install 'spamlang[hf]'") from None
    _quiet_transformers()
    candidates = [Path(override)] if override else [path, path.parent]
    for folder in candidates:
        if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                      "tokenizer.model")):
            try:
                return AutoTokenizer.from_pretrained(folder, local_files_only=True), folder
            except Exception as exc:  # see load_model
                raise SpamLangError(f"{folder}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None
    raise SpamLangError(f"no tokenizer in {' or '.join(map(str, candidates))} (give --tokenizer DIR, or "
                        f"pre-tokenized .npy text)")
