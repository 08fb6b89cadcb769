"""The measurement driver: checkpoints x text -> one ``spamlang.measure/1`` record per checkpoint."""
from __future__ import annotations

import dataclasses
import gc
import math
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from spamlang.diagnostics import orthonormal_basis
from spamlang.errors import ConfigError, SpamLangError
from spamlang.measure import checkpoint, pertoken, record, spectrum, text, update
from spamlang.measure.forward import check_linear_head, hidden_states
from spamlang.measure.logits import chunk_size
from spamlang.record import provenance

SPECTRUM_METHODS = ("auto", "exact", "sketch")
#: default tokens per forward batch (windows of seq_len tokens)
BATCH_TOKENS = 4096
#: default window length when the model allows it
SEQ_LEN = 1024
GIB = 1 << 30


@dataclass(frozen=True)
class Settings:
    """What a measurement does; every field is recorded. ``dtype`` is the model's; the head's analysis runs in
    float32 (float64 when dtype is float64)."""

    tokens: int = 16384
    seq_len: int | None = None
    seed: int = 0
    batch_size: int | None = None
    spectrum: str = "auto"
    sketch_size: int | None = None
    step_norm: float = 0.1
    device: str = "cpu"
    dtype: str = "float32"
    chunk: int | None = None
    max_memory: float | None = None
    tokenizer: str | None = None

    def __post_init__(self):
        checks = [("tokens", self.tokens >= 1, ">= 1"), ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
                  ("seq_len", self.seq_len is None or self.seq_len >= 2, ">= 2"),
                  ("batch_size", self.batch_size is None or self.batch_size >= 1, ">= 1"),
                  ("spectrum", self.spectrum in SPECTRUM_METHODS, f"one of {', '.join(SPECTRUM_METHODS)}"),
                  ("sketch_size", self.sketch_size is None or self.sketch_size >= 2, ">= 2"),
                  ("step_norm", self.step_norm > 0, "> 0"), ("dtype", self.dtype in checkpoint.DTYPES,
                                                             f"one of {', '.join(checkpoint.DTYPES)}"),
                  ("chunk", self.chunk is None or self.chunk >= 1, ">= 1"),
                  ("max_memory", self.max_memory is None or self.max_memory > 0, "> 0 GiB")]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    def recorded(self) -> dict:
        """The fields that change the numbers (not where they are computed or how much memory is allowed)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("max_memory", "tokenizer", "device",
                                                                                 "batch_size", "chunk")}


def _dims(config: dict, path: Path) -> tuple[int, int, int | None]:
    """(V, D, max positions) from a config.json (its text config for multimodal models)."""
    config = config.get("text_config") or config
    v = config.get("vocab_size")
    d = next((config[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(config.get(k), int)), None)
    if not isinstance(v, int) or d is None:
        raise SpamLangError(f"{path}: config.json gives no vocab_size and hidden size")
    positions = next((config[k] for k in ("max_position_embeddings", "n_positions") if isinstance(config.get(k), int)),
                     None)
    return v, d, positions


def memory_needed(parameters: int, n: int, v: int, d: int, settings: Settings, seq_len: int) -> int:
    """Bytes a measurement holds at its peak, estimated before loading: the weights, the hidden states, the head's
    float64 basis and update, the logit chunks, the forward activations and the spectrum's Gram or sketch."""
    c = torch.finfo(settings.compute_dtype).bits // 8
    weights = parameters * torch.finfo(checkpoint.DTYPES[settings.dtype]).bits // 8
    hidden = n * (d * c + 16)
    head = v * d * (c + 3 * 8)  # W in the compute dtype; SVD input and basis, ΔW in float64
    chunks = 4 * chunk_size(v, settings.device, settings.chunk) * v * c
    batch = settings.batch_size * seq_len if settings.batch_size else BATCH_TOKENS
    activations = 32 * batch * d * c + batch * v * c
    m = min(n, v)
    if settings.spectrum == "exact" or (settings.spectrum == "auto" and m <= spectrum.EXACT_MAX):
        spec = 3 * m * m * 8
    else:
        ell = settings.sketch_size or spectrum.default_sketch_size(d)
        spec = 2 * ell * v * (c + 8) + 3 * (2 * ell) ** 2 * 8
    return weights + hidden + head + chunks + activations + spec


def _tokens(files: list[dict], path: Path, v: int, settings: Settings, need: int, cache: dict):
    """(tokens, tokenizer description) for one checkpoint, tokenizing each tokenizer's text once."""
    if all(f["format"] == "tokens" for f in files):
        return text.load_tokens(files, v), None
    if any(f["format"] == "tokens" for f in files):
        raise SpamLangError("give either text files or pre-tokenized .npy files, not both")
    tokenizer, folder = checkpoint.load_tokenizer(path, settings.tokenizer)
    key = str(folder.resolve())
    if key not in cache:
        cache[key] = text.tokenize(files, tokenizer, need * text.POOL)
    info = {"path": str(folder), "class": type(tokenizer).__name__, "vocab_size": len(tokenizer)}
    if int(cache[key].max()) >= v:
        raise SpamLangError(f"{folder}: the tokenizer gives ids up to {int(cache[key].max())}, outside the model's "
                            f"vocabulary of {v}")
    return cache[key], info


def measure_one(path: Path, files: list[dict], settings: Settings, progress: bool = False,
                cache: dict | None = None) -> dict:
    """Measure one checkpoint folder on the described text ``files``; return its record (nothing is written)."""
    config = checkpoint.read_config(path)
    v, d, max_positions = _dims(config, path)
    parameters = checkpoint.parameter_count(path)
    seq_len = settings.seq_len or min(SEQ_LEN, max_positions or SEQ_LEN)
    if max_positions and seq_len > max_positions:
        raise SpamLangError(f"--seq-len {seq_len} exceeds the model's {max_positions} positions ({path})")
    device = torch.device(settings.device)
    needed = memory_needed(parameters, settings.tokens, v, d, settings, seq_len)
    limit = settings.max_memory * GIB if settings.max_memory else checkpoint.available_memory(device)
    if needed > limit:
        raise SpamLangError(f"{path}: a measurement needs about {needed / GIB:.2f} GiB ({parameters:,} parameters, "
                            f"{settings.tokens:,} tokens, V = {v:,}), more than the {limit / GIB:.2f} GiB "
                            f"{'allowed by --max-memory' if settings.max_memory else 'available'}")
    need = math.ceil(settings.tokens / (seq_len - 1)) * seq_len  # tokens in the windows that hold N targets
    tokens, tokenizer = _tokens(files, path, v, settings, need, {} if cache is None else cache)
    windows = text.windows(tokens, seq_len, settings.tokens, settings.seed)
    seq_len = windows.shape[1]
    loaded = checkpoint.load_model(path, device, checkpoint.DTYPES[settings.dtype])
    try:
        check_linear_head(loaded.model, windows[0], loaded.weight, loaded.bias, device, str(path))
        batch = settings.batch_size or max(1, BATCH_TOKENS // seq_len)
        h, y, positions, forward_seconds = hidden_states(loaded.model, windows, settings.tokens, batch, device,
                                                         settings.compute_dtype, progress, desc=path.name)
        if not bool(torch.isfinite(h).all()):
            raise SpamLangError(f"{path}: the model's hidden states hold non-finite values (NaN or inf): a weight of "
                                f"the checkpoint is not finite, or {settings.dtype} overflows; nothing to measure")
        w = loaded.weight.to(settings.compute_dtype)
        b = None if loaded.bias is None else loaded.bias.to(settings.compute_dtype)
        tied, architecture = loaded.tied, type(loaded.model).__name__
    finally:
        del loaded
        gc.collect()
    start = time.perf_counter()
    with tqdm(total=3, disable=not progress, desc="head analysis", unit="part") as bar:
        q = orthonormal_basis(w).to(w.dtype)  # (V, rank)
        rank = q.shape[1]
        bar.set_postfix_str("per-token")
        per_token = pertoken.summarize(pertoken.per_token(h, y, w, q, b, settings.chunk), positions, seq_len, rank, v)
        del q
        bar.update()
        bar.set_postfix_str("spectrum")
        spec = spectrum.spectrum(h, y, w, b, rank, settings.spectrum, settings.sketch_size, chunk=settings.chunk)
        bar.update()
        bar.set_postfix_str("equal-norm update")
        upd = update.equal_norm(h, y, w, b, settings.step_norm, settings.chunk)
        bar.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = forward_seconds + time.perf_counter() - start
    model = {"path": str(path), "name": path.name, "architecture": architecture, "model_type": config["model_type"],
             "config_hash": checkpoint.config_hash(config), "parameters": parameters, "vocab_size": v,
             "hidden_size": d, "head_rank": rank, "tied": tied, "bias": b is not None, "step": checkpoint.step_of(path)}
    text_info = {"files": files, "tokens_read": int(tokens.size), "windows": int(windows.shape[0]),
                 "seq_len": seq_len, "tokens": settings.tokens}
    recorded = settings.recorded()
    rec = {"schema": record.SCHEMA, "measure_id": record.measure_id(model, text_info, recorded),
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": model,
           "tokenizer": tokenizer, "text": text_info, "settings": {**recorded, "device": str(device)},
           "per_token": per_token, "spectrum": spec, "update": upd,
           "timing": {"seconds": seconds, "forward_seconds": forward_seconds,
                      "tokens_per_second": settings.tokens / seconds,
                      "forward_tokens_per_second": settings.tokens / forward_seconds},
           "env": {**dataclasses.asdict(provenance.environment(str(device), torch.get_num_threads())),
                   **_library_versions()}}
    return rec


def check_device(name: str) -> None:
    """ConfigError unless ``name`` is a device (cpu, cuda[:N] or mps) that this machine and torch build have."""
    from spamlang.training.devices import resolve_device
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind != "cpu" and index.isdigit())):
        raise ConfigError(f"--device must be cpu, cuda[:N] or mps, got {name!r}")
    resolve_device(name)


def _library_versions() -> dict:
    import importlib.metadata as md
    versions = {}
    for name in ("transformers", "tokenizers", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def measure(models: list[str | Path], texts: list[str | Path], out: str | Path | None, settings: Settings,
            progress: bool = False) -> list[tuple[dict, Path | None]]:
    """Measure every checkpoint (a trajectory folder expands to its checkpoints, by step) and write each record to
    ``out`` as soon as it is complete; return (record, path) pairs."""
    if not texts:
        raise SpamLangError("no text given (--text FILE, repeatable)")
    check_device(settings.device)
    paths = checkpoint.expand(models)
    files = [text.describe(t) for t in texts]
    cache: dict = {}
    results = []
    for path in paths:
        rec = measure_one(path, files, settings, progress, cache)
        results.append((rec, record.write(rec, out) if out is not None else None))
    return results
