"""LAION-CLAP scoring: how well a generated clip matches its prompt.

transformers' ``ClapModel`` is LAION-CLAP (HTSAT audio tower, RoBERTa text tower, both
projected to one L2-normalised space). This module loads it from a local directory only and
turns text and waveforms into embeddings; the cosine of a prompt and a clip is their dot
product.

Directory layout: what ``ClapModel.save_pretrained`` and the tokenizer's and feature
extractor's ``save_pretrained`` write, i.e. a ``laion/clap-htsat-unfused`` snapshot as it is:

- ``config.json``: the ``ClapConfig`` (``model_type`` ``"clap"``).
- ``model.safetensors`` (or, for old snapshots, ``pytorch_model.bin``): the state dict.
  The buffers that are functions of the config (``position_ids``, ``token_type_ids``,
  ``relative_position_index``, ``num_batches_tracked``) may be absent; they are recomputed.
- tokenizer files (``tokenizer.json`` / ``vocab.json`` + ``merges.txt``,
  ``tokenizer_config.json``).
- ``preprocessor_config.json`` (or a transformers-5 ``processor_config.json``): the
  ``ClapFeatureExtractor`` settings; 48 kHz.
- optional ``appliance.json``: ``model_name`` (the name reported; else the directory's, or the
  hub name for a hub-cache snapshot directory) and ``random_weights`` (true for the tiny test
  build: its scores mean nothing).

Inference choices, after the reference (``laion_clap`` ``CLAP_Module``):

- Text: RoBERTa tokens cut at 77, as the reference's tokenizer call does.
- Audio: downmixed to mono, resampled to 48 kHz, clipped to [-1, 1] and quantised to 16 bits
  as the reference does before featurising (the appliance stores clips as 16-bit WAV anyway).
- The feature extractor's truncation follows the checkpoint: ``"rand_trunc"`` for a
  non-fusion model (its default ``"fusion"`` makes 4-channel input a non-fusion model
  rejects), ``"fusion"`` for a fusion model.
- Clips up to 10 s are repeat-padded to 10 s by the extractor ("repeatpad"). Longer clips are
  NOT cut at a random window as ``"rand_trunc"`` would: they are covered by the fewest 10 s
  windows, evenly spaced from the first to the last sample (12 s: 0-10 s and 2-12 s; 30 s: three
  back to back), and the clip's embedding is the re-normalised mean of the windows'
  embeddings. Every window is exactly 10 s, so the extractor never takes its random branch,
  and for a fusion model ``is_longer`` is set false for every window (the extractor would
  otherwise mark a random one): the result is deterministic.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors
import safetensors.torch
import torch
from torch import nn

from appliance.audio import resample
from appliance.errors import ModelError
from appliance.models.files import offline_hub, read_json_object

logger = logging.getLogger(__name__)

__all__ = ["CLAP_SAMPLE_RATE", "ClapScorer"]

CLAP_SAMPLE_RATE = 48000

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
FEATURE_EXTRACTOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # transformers 5's ClapProcessor.save_pretrained
APPLIANCE_FILE = "appliance.json"

_MAX_TEXT_TOKENS = 77  # the reference tokenizes with max_length=77
_TEXT_BATCH = 64
_AUDIO_BATCH = 8  # 10 s windows per forward pass: bounds activation memory
_MIN_TOKENIZER_SIZE = 100  # transformers 5 builds a 5-token tokenizer when files are missing
_TOKENIZER_PROBE = "a dog barking in the rain"
# Buffers that are functions of the config alone; checkpoints may or may not carry them.
_COMPUTED_SUFFIXES = (
    ".position_ids",
    ".token_type_ids",
    ".relative_position_index",
    ".num_batches_tracked",
)

Embeddings = npt.NDArray[np.float32]


def _parse_config(raw: Mapping[str, Any], source: Path) -> Any:
    """A ``ClapConfig`` from config.json's contents; unknown (legacy) keys are tolerated."""
    offline_hub()
    from transformers import ClapConfig

    if raw.get("model_type") != "clap":
        raise ModelError(f"{source}: model_type must be 'clap', got {raw.get('model_type')!r}")
    try:
        config = ClapConfig.from_dict(copy.deepcopy(dict(raw)))
    except Exception as exc:  # transformers' validation errors vary by version
        raise ModelError(f"{source}: invalid CLAP config ({exc})") from exc
    return config


def _build_model(config: Any, source: Path) -> nn.Module:
    """Build a ``ClapModel`` on the meta device: no memory, no init; weights come by assign."""
    offline_hub()
    from transformers import ClapModel

    try:
        with torch.device("meta"):
            return ClapModel(config)
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise ModelError(f"{source}: cannot build the model from this config ({exc})") from exc


def _is_computed(key: str) -> bool:
    return key.endswith(_COMPUTED_SUFFIXES)


def _computed_buffer(model: nn.Module, key: str) -> torch.Tensor | None:
    """The value of a buffer that is a function of the config, on the CPU; None for others."""
    if not _is_computed(key):
        return None
    owner_name, _, leaf = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    shape = owner.get_buffer(leaf).shape
    if leaf == "position_ids":
        return torch.arange(shape[-1], dtype=torch.long).expand(shape).contiguous()
    if leaf in ("token_type_ids", "num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    create = getattr(owner, "create_relative_position_index", None)
    if create is None:
        return None
    index: torch.Tensor = create()
    return index.to("cpu", torch.long).reshape(shape).contiguous()


def _check_keys(
    expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]], source: Path
) -> list[str]:
    """Compare a checkpoint's key names and shapes with the model's state dict.

    Returns the missing keys, all of them buffers that are recomputed (see
    ``_COMPUTED_SUFFIXES``); any other missing key, any unexpected key or any shape mismatch
    is a ModelError naming ``source``.
    """
    missing = sorted(set(expected) - set(found))
    required = [key for key in missing if not _is_computed(key)]
    if required:
        raise ModelError(f"{source}: {len(required)} missing keys, e.g. {required[:5]}")
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ModelError(f"{source}: {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    wrong = [
        f"{key} {tuple(found[key])} != {tuple(expected[key])}"
        for key in sorted(found)
        if tuple(found[key]) != tuple(expected[key])
    ]
    if wrong:
        raise ModelError(f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[:3]}")
    return missing


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _weights_path(model_dir: Path) -> Path:
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelError(f"{model_dir / WEIGHTS_FILE}: file is missing (nor is {LEGACY_WEIGHTS_FILE} there)")


def _read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Check the checkpoint's keys and shapes against the model, then load it on the CPU."""
    expected = _shapes(model)
    try:
        if path.suffix == ".safetensors":
            with safetensors.safe_open(str(path), framework="pt") as handle:
                header = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118
            _check_keys(expected, header, path)
            return safetensors.torch.load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except ModelError:
        raise
    except Exception as exc:  # safetensors/pickle raise their own error types and OSError
        raise ModelError(f"{path}: cannot read the weights ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    _check_keys(expected, {key: tuple(value.shape) for key, value in state.items()}, path)
    return state


def _assign_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Adopt the checkpoint tensors (no copy), recompute absent config-defined buffers, and
    insist that nothing is left on the meta device."""
    missing = _check_keys(_shapes(model), {k: tuple(v.shape) for k, v in state.items()}, source)
    try:
        model.load_state_dict(dict(state), strict=False, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: tensors do not fit the model: {exc}") from exc
    for key in missing:
        value = _computed_buffer(model, key)
        if value is None:
            raise ModelError(f"{source}: {key} is missing and cannot be recomputed")
        owner_name, _, leaf = key.rpartition(".")
        model.get_submodule(owner_name).register_buffer(leaf, value)
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    left = [name for name, tensor in tensors if tensor.is_meta]
    if left:
        raise ModelError(f"{source}: {len(left)} tensors were not loaded, e.g. {left[:5]}")
    floating = [t for _, t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    if floating:
        model.float()


def _load_tokenizer(model_dir: Path, text_config: Any) -> Any:
    """Load the tokenizer from local files only and reject the near-empty ones.

    With its files missing, transformers 5 builds a 5-token RoBERTa tokenizer without an
    error, which encodes every text to the same two special tokens.
    """
    offline_hub()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # missing/corrupt files surface as many error types
        raise ModelError(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    size = len(tokenizer)
    if not _MIN_TOKENIZER_SIZE <= size <= text_config.vocab_size:
        raise ModelError(
            f"{model_dir}: tokenizer has {size} tokens; expected {_MIN_TOKENIZER_SIZE} to "
            f"{text_config.vocab_size} (the text vocab_size); are the tokenizer files complete?"
        )
    if tokenizer.pad_token_id != text_config.pad_token_id:
        raise ModelError(
            f"{model_dir}: tokenizer pads with id {tokenizer.pad_token_id}, the model with "
            f"{text_config.pad_token_id}"
        )
    ids = list(tokenizer(_TOKENIZER_PROBE)["input_ids"])
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    if tokenizer.unk_token_id in ids or len(words) < len(_TOKENIZER_PROBE.split()):
        raise ModelError(
            f"{model_dir}: tokenizer does not tokenize plain English ({_TOKENIZER_PROBE!r} -> "
            f"{ids}); are the tokenizer files complete?"
        )
    return tokenizer


def _load_feature_extractor(model_dir: Path, audio_config: Any) -> tuple[Any, str]:
    """The ``ClapFeatureExtractor`` and the truncation mode that fits the checkpoint."""
    offline_hub()
    from transformers import ClapFeatureExtractor

    candidates = [model_dir / FEATURE_EXTRACTOR_FILE, model_dir / PROCESSOR_FILE]
    source = next((path for path in candidates if path.is_file()), None)
    if source is None:
        raise ModelError(f"{candidates[0]}: file is missing (nor is {PROCESSOR_FILE} there)")
    read_json_object(source)  # a clear error for unreadable JSON
    try:
        extractor = ClapFeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        raise ModelError(f"{source}: cannot load the feature extractor ({exc})") from exc
    if extractor.sampling_rate != CLAP_SAMPLE_RATE:
        raise ModelError(
            f"{source}: sampling_rate must be {CLAP_SAMPLE_RATE}, got {extractor.sampling_rate}"
        )
    if extractor.feature_size != audio_config.num_mel_bins:
        raise ModelError(
            f"{source}: feature_size {extractor.feature_size} differs from the model's "
            f"num_mel_bins {audio_config.num_mel_bins}"
        )
    if extractor.padding not in ("repeatpad", "repeat", "pad"):
        raise ModelError(f"{source}: unknown padding {extractor.padding!r}")
    truncation = "fusion" if audio_config.enable_fusion else "rand_trunc"
    return extractor, truncation


def _model_name(model_dir: Path, settings: Mapping[str, Any]) -> str:
    """``model_name`` from appliance.json; a hub-cache snapshot's repo name; the dir's name."""
    name = settings.get("model_name")
    if isinstance(name, str) and name:
        return name
    resolved = model_dir.resolve()
    repo = resolved.parent.parent.name
    if resolved.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return resolved.name


def _normalise(vectors: npt.ArrayLike) -> Embeddings:
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return np.ascontiguousarray(array / np.maximum(norms, 1e-12), dtype=np.float32)


def _windows(samples: np.ndarray, length: int) -> list[np.ndarray]:
    """The fewest ``length``-sample windows, evenly spaced, that cover the whole clip."""
    total = samples.shape[0]
    if total <= length:
        return [samples]
    count = math.ceil(total / length)
    starts = np.round(np.linspace(0, total - length, count)).astype(np.int64)
    return [samples[start : start + length] for start in starts]


class ClapScorer:
    """A loaded CLAP model: text and audio embeddings in one 512-d (real model) space.

    Not meant for concurrent calls from several threads.
    """

    name: str
    dimension: int
    is_random: bool

    def __init__(
        self,
        *,
        name: str,
        device: str,
        model: nn.Module,
        tokenizer: Any,
        feature_extractor: Any,
        truncation: str,
        is_random: bool,
    ) -> None:
        self.name = name
        self.device = device
        self.is_random = is_random
        self._model = model
        self._tokenizer = tokenizer
        self._extractor = feature_extractor
        self._truncation = truncation
        self._fusion = truncation == "fusion"
        config: Any = model.config
        self.dimension = int(config.projection_dim)
        positions = int(config.text_config.max_position_embeddings) - int(
            config.text_config.pad_token_id or 0
        ) - 1
        self._max_tokens = max(2, min(_MAX_TEXT_TOKENS, int(tokenizer.model_max_length), positions))
        self._window = int(feature_extractor.nb_max_samples)

    @classmethod
    def from_dir(cls, model_dir: Path, *, device: str = "cpu") -> ClapScorer:
        """Load a model directory (see the module docstring) without touching the hub."""
        started = time.perf_counter()
        try:
            torch_device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from exc
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: model directory is missing")
        appliance_path = model_dir / APPLIANCE_FILE
        settings = read_json_object(appliance_path) if appliance_path.exists() else {}
        random_weights = settings.get("random_weights", False)
        if not isinstance(random_weights, bool):
            raise ModelError(f"{appliance_path}: random_weights must be true or false")

        config_path = model_dir / CONFIG_FILE
        config = _parse_config(read_json_object(config_path), config_path)
        tokenizer = _load_tokenizer(model_dir, config.text_config)
        extractor, truncation = _load_feature_extractor(model_dir, config.audio_config)

        model = _build_model(config, config_path)
        weights = _weights_path(model_dir)
        _assign_weights(model, _read_weights(weights, model), weights)
        model.to(torch_device)
        model.requires_grad_(False)
        model.eval()

        name = _model_name(model_dir, settings)
        logger.info(
            "loaded CLAP %s from %s on %s in %.2f s",
            name,
            model_dir,
            device,
            time.perf_counter() - started,
        )
        return cls(
            name=name,
            device=str(torch_device),
            model=model,
            tokenizer=tokenizer,
            feature_extractor=extractor,
            truncation=truncation,
            is_random=random_weights,
        )

    def text_embeddings(self, texts: Sequence[str]) -> Embeddings:
        """``(len(texts), dimension)`` float32, each row L2-normalised."""
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), _TEXT_BATCH):
                batch = self._tokenizer(
                    texts[start : start + _TEXT_BATCH],
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                )
                output = self._model.get_text_features(  # type: ignore[operator]
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                chunks.append(output.pooler_output.float().cpu().numpy())
        return _normalise(np.concatenate(chunks))

    def audio_embeddings(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> Embeddings:
        """``(len(waveforms), dimension)`` float32, each row L2-normalised.

        Each waveform is float32 ``(channels, frames)`` (or 1-D mono) at ``sample_rate``; it is
        downmixed, resampled to 48 kHz, and, past 10 s, embedded window by window (see the
        module docstring).
        """
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise TypeError(f"sample_rate must be an int, got {type(sample_rate).__name__}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        clips = list(waveforms)
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for index, waveform in enumerate(clips):
            clip = self._prepare(waveform, int(sample_rate), index)
            for window in _windows(clip, self._window):
                windows.append(window)
                owners.append(index)
        if not windows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        per_window = np.concatenate(
            [
                self._embed_windows(windows[start : start + _AUDIO_BATCH])
                for start in range(0, len(windows), _AUDIO_BATCH)
            ]
        )
        sums = np.zeros((len(clips), self.dimension), dtype=np.float64)
        np.add.at(sums, np.asarray(owners), per_window)
        return _normalise(sums)

    def similarity(
        self, prompt: str, waveforms: Sequence[np.ndarray], sample_rate: int
    ) -> tuple[list[float], Embeddings]:
        """The cosine of the prompt with each clip, and the clips' audio embeddings."""
        audio = self.audio_embeddings(waveforms, sample_rate)
        if audio.shape[0] == 0:
            return [], audio
        text = self.text_embeddings([prompt])[0]
        scores = np.clip(audio.astype(np.float64) @ text.astype(np.float64), -1.0, 1.0)
        return [float(score) for score in scores], audio

    def _prepare(self, waveform: np.ndarray, sample_rate: int, index: int) -> np.ndarray:
        """Mono, 48 kHz, clipped and 16-bit quantised as the reference does; 1-D float32."""
        audio = np.asarray(waveform, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None, :]
        if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError(
                f"waveforms[{index}] must be (channels, frames) with at least one of each, "
                f"got shape {np.shape(waveform)}"
            )
        if not np.isfinite(audio).all():
            raise ValueError(f"waveforms[{index}] contains NaN or infinite samples")
        mono = audio.mean(axis=0, dtype=np.float32, keepdims=True)
        mono = resample(np.ascontiguousarray(mono), sample_rate, CLAP_SAMPLE_RATE)[0]
        quantised = (np.clip(mono, -1.0, 1.0) * 32767.0).astype(np.int16)
        return quantised.astype(np.float32) / np.float32(32767.0)

    def _embed_windows(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        """Normalised embeddings of windows of at most 10 s each."""
        features = self._extractor(
            list(windows),
            sampling_rate=CLAP_SAMPLE_RATE,
            truncation=self._truncation,
            return_tensors="pt",
        )
        input_features = features["input_features"].to(self.device, torch.float32)
        # No window is longer than 10 s; the extractor marks a random one "longer" for fusion.
        is_longer = torch.zeros((input_features.shape[0], 1), dtype=torch.bool, device=self.device)
        with torch.inference_mode():
            output = self._model.get_audio_features(  # type: ignore[operator]
                input_features=input_features, is_longer=is_longer
            )
        return np.asarray(output.pooler_output.float().cpu().numpy(), dtype=np.float32)
