"""A tiny random-weight TangoFlux, built offline, for tests and development.

Same architecture and directory layout as the real checkpoint (see ``tangoflux``), only
small: T5 with d_model 64 and 2 layers, Flux with 1+1 layers of one 128-wide head, an Oobleck
VAE with 8 base channels. The weights are noise, so the audio is too; what it exercises is
loading, shapes, batching, seeding and timing of the real code path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import T5Config, T5TokenizerFast

from appliance.models.tangoflux import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    TEXT_ENCODER_DIR,
    TIED_EMBEDDING_KEY,
    VAE_CONFIG_FILE,
    VAE_FILE,
    _build_core,
    _build_vae,
    _parse_config,
)

MODEL_NAME = "tiny-tangoflux"

# Words of the kind that appear in sound-effect prompts: the tokenizer's training text.
_WORDS = """
a an the of in on at with and or from over under through near into onto by far behind
dog dogs puppy bark barking barks howl howling growl growling whimper cat cats meow meowing
purr purring hiss hissing bird birds chirp chirping tweet singing song songs crow crows caw
owl hooting hoot rooster crowing duck quack quacking goose honk honking chicken cluck horse
neigh neighing gallop galloping hooves cow moo mooing sheep bleat goat pig oink frog frogs
croak croaking cricket crickets insect insects buzz buzzing bee bees fly mosquito whale
dolphin wolf wolves lion roar roaring tiger elephant trumpet monkey squeak squeaking mouse
rain raining rainfall drizzle downpour storm thunder thunderstorm lightning wind windy gust
gusts breeze blowing howls whistling snow hail water waves wave ocean sea surf shore beach
river stream creek brook waterfall splash splashing drip dripping drops bubble bubbling
boiling fire crackling campfire burning flames forest jungle desert cave underwater leaves
rustling branches twigs snapping grass footsteps footstep walking running steps stomping
gravel mud wooden floor stairs door doors knock knocking creak creaking slam slamming
closing opening window glass breaking shatter shattering clink clinking bottle cup plate
dishes cutlery kitchen cooking frying sizzling chopping knife blender microwave beep beeps
beeping alarm clock ticking tick tock bell bells ringing ring chime chimes doorbell phone
telephone vibrating notification typing keyboard mouse click clicking printer computer fan
humming hum engine engines motor car cars truck bus train trains subway tram railway horn
horns siren sirens ambulance police traffic road highway street city crowd crowds people
talking chatter murmur whisper whispering shouting yelling screaming scream laughing
laughter giggle crying baby babies child children cough coughing sneeze breathing snoring
sigh clapping applause cheering cheer party music musical guitar piano drum drums drumming
violin flute trumpet saxophone bass synth synthesizer melody chord chords beat beats rhythm
loop ambient drone pad orchestra choir hum electronic techno jazz rock calm peaceful gentle
soft loud quiet distant close nearby heavy light fast slow deep high low sharp dull bright
dark metallic hollow echo echoing reverb muffled crisp clear noisy rumbling rumble roaring
crashing crash bang banging thud thump explosion explosions gunshot gunshots firework
fireworks whoosh swoosh zap laser spaceship robot machine machinery factory hammer
hammering drill drilling saw sawing construction tools metal clanging clanking rattle
rattling jingle jingling keys coins paper rustle tearing zipper scissors writing pencil
page turning book library office room hall church stadium market restaurant cafe airport
airplane plane jet helicopter boat ship motorboat sail anchor harbor dock playground
school classroom hospital farm barn village park garden morning night evening midnight
summer winter spring autumn ticking dripping pouring flowing running rushing crunching
chewing eating drinking slurping gulping swallowing kissing heartbeat pulse footfalls
skateboard bicycle bell wheels squealing tires brakes skidding honking revving idling
""".split()

_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5's vocabulary
_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()")
_VOCAB_SIZE = 800
_D_MODEL = 64
# The real model has 645 (29.95 s); a tiny VAE still takes seconds to decode that, so the tiny
# "reference" length is about 3 s. max_duration stays real: longer requests still work.
_AUDIO_SEQ_LEN = 64
_MAX_DURATION = 30
# Random weights decode to a waveform with a standard deviation around 30; scaling the last
# convolution (the output is linear in it) brings it to an ordinary level of about 0.1.
_OUTPUT_GAIN_KEY = "decoder.conv2.weight_g"
_OUTPUT_GAIN = 0.003

_TINY_CONFIG: dict[str, Any] = {
    "model_name": MODEL_NAME,
    "num_layers": 1,
    "num_single_layers": 1,
    "in_channels": 64,
    "attention_head_dim": 128,
    "joint_attention_dim": _D_MODEL,
    "num_attention_heads": 1,
    "audio_seq_len": _AUDIO_SEQ_LEN,
    "max_duration": _MAX_DURATION,
    "uncondition": False,
    "text_encoder_name": "tiny-t5 (local text_encoder/)",
}

# Oobleck defaults (44.1 kHz, stereo, 64 latent channels, hop 2048) except the widths; an
# encoder this narrow yields 4 latent channels, so this VAE can decode but not encode.
_TINY_VAE_CONFIG: dict[str, Any] = {
    "encoder_hidden_size": 8,
    "downsampling_ratios": [2, 4, 4, 8, 8],
    "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 8,
    "decoder_input_channels": 64,
    "audio_channels": 2,
    "sampling_rate": 44100,
}


def _training_text(seed: int) -> list[str]:
    """Every word and character once plus seeded short phrases.

    The characters are in the text (not the trainer's ``initial_alphabet``, whose pieces get
    scores in hash order) so that any ASCII prompt tokenizes without ``<unk>``.
    """
    rng = random.Random(seed)
    phrases = [" ".join(rng.choices(_WORDS, k=rng.randint(3, 8))) for _ in range(400)]
    return [*_WORDS, *_ALPHABET, *phrases]


def _train_tokenizer(seed: int) -> Any:
    """Train a Unigram model and hand its pieces to T5's tokenizer class."""
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIALS,
        unk_token="<unk>",
        show_progress=False,
    )
    backend.train_from_iterator(_training_text(seed), trainer=trainer)
    pieces = json.loads(backend.to_str())["model"]["vocab"]
    # The trainer is not reproducible bit for bit: its sums vary in the last bits, and the
    # characters it must keep get scores in hash order. Round the scores, give every single
    # character one floor score (used only where no longer piece fits), and order the pieces by
    # score, then text, so that the ids depend on the seed only.
    scored = {str(piece): round(float(score), 6) for piece, score in pieces}
    if any(piece not in scored for piece in _SPECIALS):
        raise RuntimeError("Unigram training lost a special token")
    ordinary = {p: s for p, s in scored.items() if p not in _SPECIALS}
    floor = min(s for p, s in ordinary.items() if len(p) > 1) - 1.0
    rescored = {p: floor if len(p) == 1 else s for p, s in ordinary.items()}
    ranked = sorted(rescored.items(), key=lambda item: (-item[1], item[0]))
    vocab = [(piece, scored[piece]) for piece in _SPECIALS] + ranked
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5_config(vocab_size: int) -> T5Config:
    """A two-layer flan-t5-shaped encoder (gated GELU, relative attention)."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=_D_MODEL,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Plausible random weights: norms at 1, biases and Snake exponents at 0, others scaled."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("alpha", "beta", "bias"):
        return torch.zeros(shape)
    if leaf == "weight_g" or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    values = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        values /= max(1, shape[1:].numel()) ** 0.5
    return values


def _random_state(keys_shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors for each key, in sorted order so the result depends only on the seed."""
    generator = torch.Generator().manual_seed(seed)
    return {name: _random_tensor(name, keys_shapes[name], generator) for name in sorted(keys_shapes)}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_tangoflux(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random TangoFlux into ``out_dir`` (created if needed) and return it."""
    out_dir = Path(out_dir)
    text_dir = out_dir / TEXT_ENCODER_DIR
    text_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(seed)
    tokenizer.save_pretrained(str(text_dir))
    t5_config = _t5_config(len(tokenizer))
    t5_config.save_pretrained(str(text_dir))

    _write_json(out_dir / CONFIG_FILE, _TINY_CONFIG)
    _write_json(out_dir / VAE_CONFIG_FILE, _TINY_VAE_CONFIG)

    core = _build_core(_parse_config(_TINY_CONFIG, out_dir / CONFIG_FILE), t5_config)
    shapes = {k: v.shape for k, v in core.state_dict().items() if k != TIED_EMBEDDING_KEY}
    safetensors.torch.save_file(
        _random_state(shapes, seed), str(out_dir / CHECKPOINT_FILE), metadata={"format": "pt"}
    )
    vae = _build_vae(_TINY_VAE_CONFIG)
    vae_state = _random_state({k: v.shape for k, v in vae.state_dict().items()}, seed + 1)
    vae_state[_OUTPUT_GAIN_KEY] *= _OUTPUT_GAIN
    safetensors.torch.save_file(vae_state, str(out_dir / VAE_FILE), metadata={"format": "pt"})
    return out_dir
