"""``appliance models fetch``: download the real TangoFlux, SA3 and CLAP into the models directory.

The only place the appliance talks to the Hugging Face Hub, and only when an operator asks
(the service itself never downloads). It needs internet; offline it fails at once with
:class:`ModelDownloadError`. Layout written under ``<models.dir>``:

- ``TangoFlux/``: ``declare-lab/TangoFlux`` (``config.json``, ``tangoflux.safetensors``,
  ``vae.safetensors``) and, in ``TangoFlux/text_encoder/``, the config and tokenizer files of
  ``google/flan-t5-large`` (not its weights: the T5 weights are in ``tangoflux.safetensors``).
- ``stable-audio-3-<variant>/`` (with ``--sa3``): a ``stabilityai/stable-audio-3-*`` snapshot,
  gated on the hub: the operator accepts the Stability AI Community Licence there first.
- ``<clap name>/``: a LAION-CLAP snapshot (``laion/clap-htsat-unfused`` by default, or
  ``laion/larger_clap_general``): config, ``model.safetensors`` (``pytorch_model.bin`` when
  the repository has no safetensors), tokenizer and preprocessor files, plus the appliance's
  ``appliance.json`` naming the model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ModelError

log = logging.getLogger(__name__)

TANGOFLUX_REPO = "declare-lab/TangoFlux"
TEXT_ENCODER_REPO = "google/flan-t5-large"
CLAP_REPOS = ("laion/clap-htsat-unfused", "laion/larger_clap_general")

TANGOFLUX_FILES = ["config.json", "tangoflux.safetensors", "vae.safetensors", "vae_config.json",
                   "README.md"]
TEXT_ENCODER_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "spiece.model"]
CLAP_FILES = ["config.json", "*.txt", "tokenizer*.json", "vocab.json", "special_tokens_map.json",
              "preprocessor_config.json", "processor_config.json", "README.md"]

# snapshot_download(repo_id, *, local_dir, allow_patterns, revision) -> path
Downloader = Callable[..., Any]


class ModelDownloadError(ModelError):
    """A model could not be downloaded (no internet, hub offline mode, unknown repository)."""

    code = "model_download_failed"


@dataclass(frozen=True)
class FetchResult:
    tangoflux_dir: Path
    clap_dir: Path

    def config_lines(self) -> list[str]:
        """What to put in ``[models]`` of the config file to use them."""
        return [f'tangoflux = "{self.tangoflux_dir}"', f'clap = "{self.clap_dir}"']


def _hub_downloader() -> Downloader:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelDownloadError(
            "HF_HUB_OFFLINE is set in the environment: unset it to download models "
            "(the service sets it for itself; `models fetch` is the one command that goes online)"
        )
    from huggingface_hub import snapshot_download

    return snapshot_download


def _download(download: Downloader, repo: str, target: Path, patterns: Sequence[str],
              revision: str | None) -> Path:
    log.info("downloading", extra={"repo": repo, "target": str(target)})
    try:
        download(repo_id=repo, local_dir=str(target), allow_patterns=list(patterns),
                 revision=revision)
    except ModelDownloadError:
        raise
    except Exception as exc:  # the hub client raises many types: network, HTTP, offline, auth
        raise ModelDownloadError(
            f"cannot download {repo} from the Hugging Face Hub into {target}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(does this machine have internet access? see docs/models.md)"
        ) from exc
    return target


def fetch_models(
    models_dir: Path, *, clap_repo: str = CLAP_REPOS[0], revision: str | None = None,
    download: Downloader | None = None,
) -> FetchResult:
    """Download TangoFlux (+ flan-t5-large tokenizer/config) and CLAP under ``models_dir``."""
    download = download or _hub_downloader()
    models_dir = Path(models_dir)
    tangoflux = _download(download, TANGOFLUX_REPO, models_dir / "TangoFlux", TANGOFLUX_FILES,
                          revision)
    _download(download, TEXT_ENCODER_REPO, tangoflux / "text_encoder", TEXT_ENCODER_FILES, None)
    for required in ("config.json", "tangoflux.safetensors", "vae.safetensors"):
        if not (tangoflux / required).is_file():
            raise ModelDownloadError(f"{TANGOFLUX_REPO} came without {required}")

    clap_dir = models_dir / clap_repo.rsplit("/", 1)[-1]
    _download(download, clap_repo, clap_dir, [*CLAP_FILES, "model.safetensors"], None)
    if not (clap_dir / "model.safetensors").is_file():  # older snapshots: pickled weights only
        _download(download, clap_repo, clap_dir, ["pytorch_model.bin"], None)
    if not any((clap_dir / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise ModelDownloadError(f"{clap_repo} came without model.safetensors or pytorch_model.bin")
    (clap_dir / "appliance.json").write_text(
        json.dumps({"model_name": clap_repo, "random_weights": False}, indent=2) + "\n",
        encoding="utf-8",
    )
    return FetchResult(tangoflux, clap_dir)


SA3_REPOS = {variant: f"stabilityai/stable-audio-3-{variant}"
             for variant in ("small-sfx", "small-music", "medium")}
SA3_FILES = ["model_index.json", "*/config.json", "*/*.safetensors", "*/*.safetensors.index.json",
             "tokenizer/*", "scheduler/*", "LICENSE*", "README.md"]
SA3_GATED = (
    "the Stable Audio 3 repositories are gated: sign in on huggingface.co, accept the Stability "
    "AI Community Licence on the model page, then give this machine a token "
    "(`huggingface-cli login` or HF_TOKEN)"
)


def fetch_sa3(models_dir: Path, variant: str, *, revision: str | None = None,
              download: Downloader | None = None) -> Path:
    """Download one SA3 snapshot into ``<models_dir>/stable-audio-3-<variant>``.

    The result is named in ``appliance.json`` so that cache keys and replies carry the exact
    repository; set ``models.sa3`` (or a ``models.generators`` entry) to the returned path.
    """
    if variant not in SA3_REPOS:
        raise ModelDownloadError(f"unknown Stable Audio 3 variant {variant!r}; one of {sorted(SA3_REPOS)}")
    download = download or _hub_downloader()
    repo = SA3_REPOS[variant]
    target = Path(models_dir) / repo.rsplit("/", 1)[-1]
    try:
        _download(download, repo, target, SA3_FILES, revision)
    except ModelDownloadError as exc:
        raise ModelDownloadError(f"{exc.message}; note that {SA3_GATED}") from exc
    if not (target / "model_index.json").is_file():
        raise ModelDownloadError(f"{repo} came without model_index.json; {SA3_GATED}")
    (target / "appliance.json").write_text(
        json.dumps({"model_name": repo, "random_weights": False}, indent=2) + "\n", encoding="utf-8")
    return target
