"""Cache keys: the exact-match key of a request and the random key of a stored item."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata

ITEM_KEY = re.compile(r"^[0-9a-f]{32}$")

_WS = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?…。、"


def normalise_prompt(prompt: str) -> str:
    """Unicode NFKC, lowercase, whitespace collapsed, trailing punctuation stripped.

    This defines the exact cache key: it lives here, apart from the reuse decision, so
    that no lexicon or model change can ever change a key (a changed key orphans every
    cached clip).
    """
    text = unicodedata.normalize("NFKC", prompt).lower()
    text = _WS.sub(" ", text).strip()
    return text.rstrip(_TRAILING_PUNCT + " ").strip()


def exact_key(prompt: str, *, model: str, duration_s: float, loop: bool) -> str:
    """Hash of the normalised prompt and the parameters that change the sound.

    Steps, guidance and seed are left out on purpose (DESIGN.md): a cached clip of the same
    prompt, model, length and loop flag serves a request that differs only in those; a
    device that wants a fresh take sends ``force: true``.
    """
    material = json.dumps(
        [normalise_prompt(prompt), model, f"{duration_s:.3f}", bool(loop)], ensure_ascii=False
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def new_item_key() -> str:
    return secrets.token_hex(16)


def is_item_key(value: str) -> bool:
    return bool(ITEM_KEY.match(value))
