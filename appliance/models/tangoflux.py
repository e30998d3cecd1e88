"""TangoFlux text-to-audio inference, rebuilt on diffusers + transformers.

The published package pins old library versions and reaches for the model hub; this module
loads the same checkpoint layout from a local directory only and runs the same sampling math:
T5 text encoding (+ a duration token) -> Flux transformer with flow-matching Euler steps and
classifier-free guidance -> Oobleck VAE decode -> 44.1 kHz float32 waveforms.

Directory layout (the published checkpoint's):

- ``config.json``: TangoFlux hyper-parameters (``num_layers``, ``audio_seq_len``, ...),
  optionally ``model_name`` and ``text_encoder_path``.
- ``tangoflux.safetensors``: keys ``transformer.*``, ``text_encoder.*``, ``fc.*``,
  ``duration_emebdder.*`` (sic), without the tied ``text_encoder.encoder.embed_tokens.weight``.
- ``vae.safetensors``: an ``AutoencoderOobleck`` state dict; ``vae_config.json`` optional.
- ``text_encoder/``: the T5 config and tokenizer files (``google/flan-t5-large`` for the real
  model), or the directory named by ``text_encoder_path``.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import safetensors.torch
import torch
from diffusers import AutoencoderOobleck, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from torch import nn
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from appliance.errors import ModelError
from appliance.models.files import read_json_object

logger = logging.getLogger(__name__)

_Built = TypeVar("_Built", bound=nn.Module)

SAMPLE_RATE = 44100

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "tangoflux.safetensors"
VAE_FILE = "vae.safetensors"
VAE_CONFIG_FILE = "vae_config.json"
TEXT_ENCODER_DIR = "text_encoder"
# The checkpoint leaves out this key: it is the same tensor as ``text_encoder.shared.weight``.
TIED_EMBEDDING_KEY = "text_encoder.encoder.embed_tokens.weight"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_DURATION_FEATURES = 256  # internal width of the reference's duration embedder
_ROPE_AXES = (16, 56, 56)  # FluxTransformer2DModel's default axes_dims_rope
_NEEDED_MARGIN_FRAMES = 4  # extra latent frames so the decoder's tail edge falls past the cut
_MAX_TEXT_TOKENS = 512  # flan-t5's model_max_length; caps tokenizers that report "unlimited"
_MIN_TOKENIZER_SIZE = 100  # an offline hub miss yields a near-empty tokenizer; reject it
_TOKENIZER_PROBE = "a dog barking in the rain"


@dataclass(frozen=True)
class _Config:
    """TangoFlux hyper-parameters; defaults are the reference's (config.get with defaults)."""

    num_layers: int = 6
    num_single_layers: int = 18
    in_channels: int = 64
    attention_head_dim: int = 128
    joint_attention_dim: int = 1024
    num_attention_heads: int = 8
    audio_seq_len: int = 645
    max_duration: float = 30.0
    model_name: str | None = None
    text_encoder_path: str | None = None


_INT_KEYS = (
    "num_layers",
    "num_single_layers",
    "in_channels",
    "attention_head_dim",
    "joint_attention_dim",
    "num_attention_heads",
    "audio_seq_len",
)


def _parse_config(raw: Mapping[str, Any], source: Path) -> _Config:
    """Validate TangoFlux's config.json; unknown keys (training settings) are ignored."""
    values: dict[str, Any] = {}
    for key in _INT_KEYS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"{source}: {key} must be a positive integer, got {value!r}")
            values[key] = value
    if "max_duration" in raw:
        value = raw["max_duration"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ModelError(f"{source}: max_duration must be a positive number, got {value!r}")
        values["max_duration"] = float(value)
    for key in ("model_name", "text_encoder_path"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key]:
                raise ModelError(f"{source}: {key} must be a non-empty string")
            values[key] = raw[key]
    config = _Config(**values)
    if sum(_ROPE_AXES) != config.attention_head_dim:
        raise ModelError(
            f"{source}: attention_head_dim must be {sum(_ROPE_AXES)} (the rotary axes "
            f"{_ROPE_AXES} add up to it), got {config.attention_head_dim}"
        )
    return config


def _vae_kwargs(raw: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """Keep AutoencoderOobleck constructor arguments; reject keys it does not know."""
    kwargs = {k: v for k, v in raw.items() if not k.startswith("_")}
    known = set(inspect.signature(AutoencoderOobleck.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ModelError(f"{source}: unknown AutoencoderOobleck settings {unknown}")
    return kwargs


class _FourierFeatures(nn.Module):
    """Stable Audio's random-Fourier features of a scalar; ``weights`` is the checkpoint's name."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.empty(features // 2))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        column = values[:, None]
        angles = column * self.weights[None] * (2 * math.pi)
        return torch.cat([column, angles.sin(), angles.cos()], dim=-1)


class _DurationEmbedder(nn.Module):
    """Maps a duration in seconds to one conditioning token, as the reference does."""

    def __init__(self, width: int, max_value: float) -> None:
        super().__init__()
        self.max_value = max_value
        self.time_positional_embedding = nn.Sequential(
            _FourierFeatures(_DURATION_FEATURES),
            nn.Linear(_DURATION_FEATURES + 1, width),
        )

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        normalized = seconds.clamp(0.0, self.max_value) / self.max_value
        dtype = next(self.parameters()).dtype
        embedded = self.time_positional_embedding(normalized.to(dtype))
        return embedded.view(-1, 1, embedded.shape[-1])


class _TangoFluxCore(nn.Module):
    """The modules of ``tangoflux.safetensors``, attribute names matching its key prefixes."""

    def __init__(self, config: _Config, t5_config: T5Config) -> None:
        super().__init__()
        width = t5_config.d_model
        self.text_encoder = T5EncoderModel(t5_config)
        self.fc = nn.Sequential(nn.Linear(width, config.joint_attention_dim), nn.ReLU())
        self.duration_emebdder = _DurationEmbedder(width, config.max_duration)
        self.transformer = FluxTransformer2DModel(
            in_channels=config.in_channels,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            pooled_projection_dim=width,
            guidance_embeds=False,
        )


def _build_core(config: _Config, t5_config: T5Config) -> _TangoFluxCore:
    """Build the core on the meta device: no memory, no random init; weights come by assign."""
    with torch.device("meta"):
        return _TangoFluxCore(config, t5_config)


def _build_vae(kwargs: Mapping[str, Any]) -> AutoencoderOobleck:
    """Build the VAE on the meta device (see _build_core)."""
    with warnings.catch_warnings(), torch.device("meta"):
        # Oobleck uses the old weight_norm API; its key names (weight_g/weight_v) depend on it.
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return AutoencoderOobleck(**kwargs)


def _build_checked(build: Callable[[], _Built], source: Path) -> _Built:
    """Run a constructor; odd config values surface as assorted errors: name the file."""
    try:
        return build()
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, ZeroDivisionError) as exc:
        raise ModelError(f"{source}: cannot build the model from this config ({exc})") from exc


def _assign_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: Path,
    allowed_missing: Iterable[str] = (),
) -> None:
    """Adopt the checkpoint tensors as the module's own (no copy) and insist the keys match."""
    try:
        result = module.load_state_dict(dict(state), strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise ModelError(f"{source}: tensors do not fit the model: {exc}") from exc
    missing = sorted(set(result.missing_keys) - set(allowed_missing))
    if missing:
        raise ModelError(f"{source}: {len(missing)} missing keys, e.g. {missing[:5]}")
    if result.unexpected_keys:
        unexpected = sorted(result.unexpected_keys)
        raise ModelError(f"{source}: {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")


def _ensure_materialised(module: nn.Module, source: Path) -> None:
    """A tensor left on meta would only fail later, mid-generation; fail at load instead."""
    tensors = [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]
    left = [name for name, tensor in tensors if tensor.is_meta]
    if left:
        raise ModelError(f"{source}: {len(left)} tensors were not loaded, e.g. {left[:5]}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file on the CPU, naming the file on failure."""
    if not path.is_file():
        raise ModelError(f"{path}: file is missing")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types and OSError
        raise ModelError(f"{path}: cannot read safetensors ({exc})") from exc


def _load_t5_config(text_dir: Path) -> T5Config:
    """Read the T5 config from the local text-encoder directory."""
    path = text_dir / "config.json"
    raw = read_json_object(path)
    if raw.get("model_type") != "t5":
        raise ModelError(f"{path}: model_type must be 't5', got {raw.get('model_type')!r}")
    try:
        return T5Config.from_dict(raw)
    except Exception as exc:  # transformers validation errors vary by version
        raise ModelError(f"{path}: invalid T5 config ({exc})") from exc


def _load_tokenizer(text_dir: Path, vocab_size: int) -> Any:
    """Load the tokenizer from local files only and reject the near-empty ones.

    Offline, transformers can hand back a tokenizer that maps every word to ``<unk>`` without
    any error, which would silently make every prompt the same.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    except Exception as exc:  # missing/corrupt files surface as many error types
        raise ModelError(f"{text_dir}: cannot load the tokenizer ({exc})") from exc
    size = len(tokenizer)
    if not _MIN_TOKENIZER_SIZE <= size <= vocab_size:
        raise ModelError(
            f"{text_dir}: tokenizer has {size} tokens; expected {_MIN_TOKENIZER_SIZE} to "
            f"{vocab_size} (the T5 vocab_size); are the tokenizer files complete?"
        )
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ModelError(f"{text_dir}: tokenizer has no pad or eos token")
    ids = tokenizer(_TOKENIZER_PROBE)["input_ids"]
    if tokenizer.unk_token_id in ids or len(ids) < 2:
        raise ModelError(
            f"{text_dir}: tokenizer maps plain English ({_TOKENIZER_PROBE!r}) to unknown tokens"
        )
    return tokenizer


def _text_encoder_dir(model_dir: Path, config: _Config) -> Path:
    """The T5 config+tokenizer directory: ``text_encoder_path`` if set, else ``text_encoder/``."""
    if config.text_encoder_path is None:
        path = model_dir / TEXT_ENCODER_DIR
    else:
        path = Path(config.text_encoder_path).expanduser()
        if not path.is_absolute():
            path = model_dir / path
    if not path.is_dir():
        raise ModelError(
            f"{path}: text-encoder directory is missing; put the T5 config and tokenizer files "
            "(google/flan-t5-large for the real model) there"
        )
    return path


def _check_compatible(
    config: _Config, t5_config: T5Config, vae: AutoencoderOobleck, source: Path
) -> None:
    """Reject combinations that would only fail inside a forward pass."""
    if t5_config.d_model != config.joint_attention_dim:
        raise ModelError(
            f"{source}: joint_attention_dim {config.joint_attention_dim} must equal the T5 "
            f"d_model {t5_config.d_model} (T5 states feed the transformer directly)"
        )
    if vae.config.decoder_input_channels != config.in_channels:
        raise ModelError(
            f"{source}: VAE latent width {vae.config.decoder_input_channels} differs from "
            f"in_channels {config.in_channels}"
        )
    if vae.config.sampling_rate != SAMPLE_RATE:
        raise ModelError(f"{source}: VAE sampling_rate must be {SAMPLE_RATE}")


def _prepare(module: nn.Module, device: str, dtype: torch.dtype) -> None:
    """Move to the target device/dtype, freeze, and switch off dropout."""
    module.to(device=device)
    if any(tensor.dtype != dtype for tensor in module.parameters()):
        module.to(dtype=dtype)  # diffusers logs a warning on every dtype cast: only when needed
    module.requires_grad_(False)
    module.eval()


class TangoFluxGenerator:
    """A loaded TangoFlux model that turns one prompt into a batch of candidate clips."""

    def __init__(
        self,
        *,
        name: str,
        device: str,
        config: _Config,
        core: _TangoFluxCore,
        vae: AutoencoderOobleck,
        tokenizer: Any,
        dtype: torch.dtype,
        latent_frames: Literal["needed", "reference"],
    ) -> None:
        self.name = name
        self.device = device
        self._config = config
        self._core = core
        self._vae = vae
        self._tokenizer = tokenizer
        self._dtype = dtype
        self._latent_frames = latent_frames
        self._hop = math.prod(vae.config.downsampling_ratios)
        self._max_tokens = min(int(tokenizer.model_max_length), _MAX_TEXT_TOKENS)

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        latent_frames: Literal["needed", "reference"] = "needed",
    ) -> TangoFluxGenerator:
        """Load a model directory (see the module docstring) without touching the hub."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if latent_frames not in ("needed", "reference"):
            raise ValueError(f"latent_frames must be 'needed' or 'reference', got {latent_frames!r}")
        started = time.perf_counter()
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"{model_dir}: model directory is missing")
        config_path = model_dir / CONFIG_FILE
        config = _parse_config(read_json_object(config_path), config_path)
        text_dir = _text_encoder_dir(model_dir, config)
        t5_config = _load_t5_config(text_dir)
        tokenizer = _load_tokenizer(text_dir, t5_config.vocab_size)

        vae_config_path = model_dir / VAE_CONFIG_FILE
        vae_raw = read_json_object(vae_config_path) if vae_config_path.exists() else {}
        vae_kwargs = _vae_kwargs(vae_raw, vae_config_path)
        vae = _build_checked(lambda: _build_vae(vae_kwargs), vae_config_path)
        _check_compatible(config, t5_config, vae, config_path)

        core = _build_checked(lambda: _build_core(config, t5_config), text_dir / "config.json")
        checkpoint = model_dir / CHECKPOINT_FILE
        _assign_state(core, _read_safetensors(checkpoint), checkpoint, {TIED_EMBEDDING_KEY})
        core.text_encoder.tie_weights()
        _ensure_materialised(core, checkpoint)
        vae_path = model_dir / VAE_FILE
        _assign_state(vae, _read_safetensors(vae_path), vae_path)
        _ensure_materialised(vae, vae_path)

        torch_dtype = _DTYPES[dtype]
        # T5 activations overflow float16 (it was trained in bfloat16); it runs once a clip.
        text_dtype = torch.float32 if torch_dtype == torch.float16 else torch_dtype
        _prepare(core.text_encoder, device, text_dtype)
        for part in (core.fc, core.duration_emebdder, core.transformer, vae):
            _prepare(part, device, torch_dtype)
        core.eval()

        name = config.model_name or model_dir.resolve().name
        logger.info(
            "loaded %s from %s on %s/%s in %.2f s",
            name,
            model_dir,
            device,
            dtype,
            time.perf_counter() - started,
        )
        return cls(
            name=name,
            device=device,
            config=config,
            core=core,
            vae=vae,
            tokenizer=tokenizer,
            dtype=torch_dtype,
            latent_frames=latent_frames,
        )

    def generate(
        self,
        prompt: str,
        *,
        duration_s: float,
        steps: int,
        guidance_scale: float,
        seed: int | None = None,
        candidates: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[np.ndarray]:
        """Returns `candidates` waveforms, each float32 of shape (channels, frames) at 44.1 kHz,
        trimmed to round(duration_s*44100) frames.

        ``guidance_scale`` <= 1 skips the unconditional branch; ``seed`` makes the result
        reproducible without touching torch's global RNG; the duration is clamped to the
        model's ``max_duration``.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if not math.isfinite(duration_s) or duration_s <= 0:
            raise ValueError(f"duration_s must be a positive number, got {duration_s}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        duration = min(float(duration_s), self._config.max_duration)
        samples = max(1, round(duration * SAMPLE_RATE))
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)

        started = time.perf_counter()
        with torch.inference_mode():
            guided = guidance_scale > 1.0
            context, pooled = self._condition(prompt, duration, guided, candidates)
            frames = self._frames_for(samples)
            noise = torch.randn(
                (candidates, frames, self._config.in_channels),
                generator=generator,
                dtype=torch.float32,
            )
            latents = self._denoise(
                noise.to(self.device), context, pooled, steps, guidance_scale, progress
            )
            waves = [self._decode(latents[i : i + 1], samples) for i in range(candidates)]
        logger.debug(
            "generated %d x %.2f s (%d frames, %d steps, cfg %.2f) in %.2f s",
            candidates,
            duration,
            frames,
            steps,
            guidance_scale,
            time.perf_counter() - started,
        )
        return waves

    def _frames_for(self, samples: int) -> int:
        """Latent frames to generate: the reference's fixed length, or just what is needed.

        Either way at least enough for ``samples``: the reference's 645 frames hold only
        29.95 s, so a 30 s request gets one frame more rather than a short clip.
        """
        needed = math.ceil(samples / self._hop)
        reference = max(self._config.audio_seq_len, needed)
        if self._latent_frames == "reference":
            return reference
        return min(needed + _NEEDED_MARGIN_FRAMES, reference)

    def _encode_text(self, texts: list[str], length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states and the attention mask, padded to ``length`` when given.

        Prompts are cut at the tokenizer's limit as on the reference's guided path (its
        unguided path, which would cut at 64 tokens, crashes, so there is nothing to match).
        """
        if length is None:
            batch = self._tokenizer(
                texts, max_length=self._max_tokens, truncation=True, return_tensors="pt"
            )
        else:
            batch = self._tokenizer(
                texts,
                max_length=length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self._core.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states, mask

    def _condition(
        self, prompt: str, duration: float, guided: bool, candidates: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens (text + duration) and pooled vector, batched [uncond..., cond...].

        As in the reference, the empty negative prompt is padded to the prompt's length and
        the pooled vector is the mean over real (unpadded) tokens only.
        """
        states, mask = self._encode_text([prompt], None)
        if guided:
            empty, empty_mask = self._encode_text([""], states.shape[1])
            states = torch.cat([empty, states])
            mask = torch.cat([empty_mask, mask])
        weights = mask.to(torch.float32).unsqueeze(-1)
        pooled = (states.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        pooled = self._core.fc(pooled.to(self._dtype))
        seconds = torch.tensor([duration], dtype=torch.float32, device=self.device)
        duration_token = self._core.duration_emebdder(seconds)
        duration_token = duration_token.expand(states.shape[0], -1, -1)
        context = torch.cat([states.to(self._dtype), duration_token.to(self._dtype)], dim=1)
        return (
            context.repeat_interleave(candidates, dim=0),
            pooled.repeat_interleave(candidates, dim=0),
        )

    def _denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        pooled: torch.Tensor,
        steps: int,
        guidance_scale: float,
        progress: Callable[[int, int], None] | None,
    ) -> torch.Tensor:
        """Flow-matching Euler steps from sigma 1 to 1/steps, latents kept in float32."""
        guided = context.shape[0] == 2 * latents.shape[0]
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        sigmas = np.linspace(1.0, 1.0 / steps, steps).tolist()
        scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        frames = latents.shape[1]
        txt_ids = torch.zeros((context.shape[1], 3), device=self.device)
        positions = torch.arange(frames, dtype=torch.float32, device=self.device)
        img_ids = positions[:, None].expand(frames, 3)
        for index, timestep in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents, latents]) if guided else latents
            sigma = (timestep / 1000).expand(model_input.shape[0]).to(self._dtype)
            prediction = self._core.transformer(
                hidden_states=model_input.to(self._dtype),
                timestep=sigma,
                guidance=None,
                pooled_projections=pooled,
                encoder_hidden_states=context,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0].float()
            if guided:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, timestep, latents).prev_sample
            if progress is not None:
                progress(index + 1, steps)
        return latents

    def _decode(self, latents: torch.Tensor, samples: int) -> np.ndarray:
        """Decode one candidate (one at a time bounds the VAE's large activation memory)."""
        vae_dtype = self._dtype
        waveform = self._vae.decode(latents.transpose(1, 2).to(vae_dtype)).sample[0]
        waveform = waveform[:, :samples].float().cpu()
        if waveform.shape[1] < samples:  # only with odd upsampling ratios in a custom VAE
            waveform = torch.nn.functional.pad(waveform, (0, samples - waveform.shape[1]))
        return np.ascontiguousarray(waveform.numpy(), dtype=np.float32)
