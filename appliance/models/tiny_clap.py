"""A tiny random-weight CLAP, built offline, for tests and development.

Same architecture and directory layout as ``laion/clap-htsat-unfused`` (see ``clap``): an
HTSAT (Swin) audio tower and a RoBERTa text tower with a byte-level BPE tokenizer, only small
(about 45 k parameters, under 1 MB on disk). The weights are noise, so its similarity scores
mean nothing: ``appliance.json`` says ``"random_weights": true`` so that the appliance can
switch its quality gate off. What it exercises is the real loading and embedding code path.

The output is a pure function of the seed: building twice writes byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from appliance.models.clap import (
    APPLIANCE_FILE,
    CLAP_SAMPLE_RATE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    _build_model,
    _computed_buffer,
)

MODEL_NAME = "tiny-clap"

# RoBERTa's special tokens, in RoBERTa's id order (<s>=0, <pad>=1, </s>=2, <unk>=3).
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_VOCAB_SIZE = 1200  # 5 specials + 256 byte symbols + merges
_MAX_TOKENS = 77  # LAION-CLAP's text length; RoBERTa positions start at pad id + 1 = 2
_PROJECTION_DIM = 32

# Sound-description vocabulary for the tokenizer's training text (any text tokenizes anyway:
# a byte-level BPE has every byte as a symbol; these words just get whole-word tokens).
_LEXICON = """
the a an of and with in on at from by under over near behind through into far close
sound sounds noise noises audio recording ambience ambient background foreground loop
dog dogs barking bark growling howling puppy cat cats meowing purring hissing kitten
bird birds singing chirping tweeting crow cawing owl hooting seagull gulls pigeons cooing
rooster crowing hen clucking duck quacking goose horse neighing galloping cow mooing
sheep bleating goat pig grunting frog croaking crickets insects buzzing bee bees fly
wolf lion roaring elephant monkey whale dolphins mouse squeaking snake rattlesnake
rain raindrops drizzle downpour storm thunder thunderstorm lightning wind gusts breeze
blowing howls snow hail water waves ocean sea surf beach river stream creek waterfall
splash splashing dripping drip drops bubbles bubbling boiling kettle fire crackling
campfire burning flames forest jungle desert cave underwater leaves rustling branches
twigs snapping grass footsteps walking running jogging stomping gravel mud sand wooden
floor stairs door knocking creaking slamming closing opening window glass breaking
shattering clinking bottle cup plate dishes kitchen cooking frying sizzling chopping
knife blender microwave beeping alarm clock ticking bell bells ringing chimes doorbell
phone vibrating notification typing keyboard clicking printer computer fan humming hum
engine motor car cars truck bus train subway tram railway horn honking siren sirens
ambulance police traffic road highway street city crowd people talking chatter murmur
whisper whispering shouting yelling screaming laughing laughter crying baby child
children coughing sneezing breathing snoring sighing clapping applause cheering party
music guitar piano drum drums drumming violin cello flute trumpet saxophone bass synth
melody chords beat rhythm orchestra choir electronic techno jazz rock calm peaceful
gentle soft loud quiet distant nearby heavy light fast slow deep high low sharp dull
bright dark metallic hollow echo echoing reverb muffled crisp clear noisy rumbling
crash crashing bang banging thud thump explosion gunshot fireworks whoosh swoosh zap
laser spaceship robot machine machinery factory hammer hammering drill drilling saw
construction tools metal clanging clanking rattling jingling keys coins paper tearing
zipper scissors writing pencil pages book library office room hall church stadium market
restaurant cafe airport airplane plane jet helicopter boat ship motorboat harbor dock
playground school classroom hospital farm barn village park garden morning night
evening summer winter spring autumn pouring flowing rushing crunching chewing eating
drinking slurping swallowing heartbeat skateboard bicycle wheels tires brakes skidding
revving idling accelerating passing approaching departing
""".split()
_CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,;:!?'\"-()")

_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": _MAX_TOKENS + 2,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
# spec_size 256 and 64 mel bins are fixed by the feature extractor (1001 frames of 64 mels
# fold into a 256 x 256 image); the 64 x 64 patch grid must divide by the 8 x 8 windows at
# every stage: two stages of one block each, 8 then 16 channels.
_AUDIO_CONFIG: dict[str, Any] = {
    "spec_size": 256,
    "num_mel_bins": 64,
    "window_size": 8,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "patch_embeds_hidden_size": 8,
    "depths": [1, 1],
    "num_attention_heads": [1, 2],
    "num_hidden_layers": 2,
    "hidden_size": 16,  # patch_embeds_hidden_size * 2 ** (len(depths) - 1)
    "enable_fusion": False,
    "fusion_type": None,
}
# The real checkpoint's extractor settings, non-fusion ("rand_trunc"; see clap.py).
_FEATURE_EXTRACTOR: dict[str, Any] = {
    "feature_size": 64,
    "sampling_rate": CLAP_SAMPLE_RATE,
    "hop_length": 480,
    "max_length_s": 10,
    "fft_window_size": 1024,
    "padding_value": 0.0,
    "return_attention_mask": False,
    "frequency_min": 50,
    "frequency_max": 14000,
    "top_db": None,
    "truncation": "rand_trunc",
    "padding": "repeatpad",
}


def _training_text(seed: int) -> list[str]:
    """Every word alone and after a space, every character, and seeded short descriptions."""
    rng = random.Random(seed)
    phrases = [" ".join(rng.choices(_LEXICON, k=rng.randint(3, 9))) for _ in range(300)]
    return [*_LEXICON, *(" " + word for word in _LEXICON), *_CHARACTERS, *phrases]


def _train_tokenizer(seed: int) -> Any:
    """Train a byte-level BPE (RoBERTa's kind) and hand it to ``RobertaTokenizer``.

    The BPE trainer's merges are a function of the pair counts with ties broken by the pair,
    so they do not depend on hash order; the ids are nevertheless rebuilt here from the merge
    list (specials, the 256 byte symbols sorted, then one id per merge in merge order) so that
    they cannot depend on anything but the training text.
    """
    from transformers import RobertaTokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_text(seed), trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    vocab: dict[str, int] = {}
    for token in [*_SPECIALS, *sorted(pre_tokenizers.ByteLevel.alphabet())]:
        vocab.setdefault(token, len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    if set(vocab) != set(trained["vocab"]):
        raise RuntimeError("BPE training produced pieces that are not merges of bytes")
    return RobertaTokenizer(
        vocab=vocab,
        merges=merges,
        add_prefix_space=False,
        model_max_length=_MAX_TOKENS,
    )


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Plausible random weights: norm scales at 1, biases at 0, matrices scaled by fan-in."""
    leaf = name.rsplit(".", 1)[-1]
    if name in ("logit_scale_a", "logit_scale_t"):
        return torch.full(shape, math.log(1 / 0.07))
    if leaf == "bias":
        return torch.zeros(shape)
    if leaf == "weight" and len(shape) == 1:  # LayerNorm / BatchNorm scales
        return torch.ones(shape)
    values = torch.randn(shape, generator=generator)
    if leaf == "relative_position_bias_table":
        return values * 0.02
    if len(shape) >= 2:
        values /= max(1, shape[1:].numel()) ** 0.5
    return values


def _tiny_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded parameters (in sorted key order) and the buffers' defined values."""
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for name in sorted(model.state_dict()):
        if name in parameters:
            state[name] = _random_tensor(name, parameters[name].shape, generator)
            continue
        value = _computed_buffer(model, name)
        if value is None:  # BatchNorm statistics: an identity normalisation
            buffer = model.get_buffer(name)
            fill = 1.0 if name.endswith("running_var") else 0.0
            value = torch.full(buffer.shape, fill, dtype=buffer.dtype)
        state[name] = value.contiguous()
    return state


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_clap(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random CLAP into ``out_dir`` (created if needed) and return it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import ClapConfig, ClapFeatureExtractor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(seed)
    tokenizer.save_pretrained(str(out_dir))
    ClapFeatureExtractor(**_FEATURE_EXTRACTOR).save_pretrained(str(out_dir))

    config = ClapConfig(
        text_config={**_TEXT_CONFIG, "vocab_size": len(tokenizer)},
        audio_config=_AUDIO_CONFIG,
        projection_dim=_PROJECTION_DIM,
    )
    config.save_pretrained(str(out_dir))
    model = _build_model(config, out_dir / CONFIG_FILE)
    safetensors.torch.save_file(
        _tiny_state(model, seed), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"}
    )
    _write_json(
        out_dir / APPLIANCE_FILE,
        {"model_name": MODEL_NAME, "random_weights": True, "seed": seed},
    )
    return out_dir
