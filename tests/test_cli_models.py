"""``appliance models check | fetch | build-tiny`` on real (tiny) model directories."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import main
from appliance.config import Settings
from appliance.models.check import check_models
from appliance.models.fetch import CLAP_REPOS, TANGOFLUX_REPO, TEXT_ENCODER_REPO, fetch_models
from testkit.services import free_port, write_config


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``models build-tiny`` into a fresh models dir; returns (config file, models dir)."""
    root = tmp_path_factory.mktemp("cli-models")
    config = root / "appliance.toml"
    write_config(config, {"models": {"dir": str(root / "models")}})
    assert main(["models", "build-tiny", "--config", str(config), "--json"]) == 0
    return config, root / "models"


def _run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_build_tiny_writes_both_models_and_check_finds_them_loadable_with_hashes(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, models = built
    assert (models / "tiny-tangoflux" / "tangoflux.safetensors").is_file()
    assert (models / "tiny-clap" / "model.safetensors").is_file()
    code, body = _run_json(capsys, ["models", "check", "--config", str(config), "--json", "--hash"])
    assert code == 0 and body["ok"] is True
    by_role = {m["role"]: m for m in body["models"]}
    assert set(by_role) == {"generator", "scorer", "embedder"}
    generator, scorer = by_role["generator"], by_role["scorer"]
    assert generator["name"] == "tiny-tangoflux" and generator["tiny"] is True
    assert scorer["name"] == "tiny-clap" and scorer["tiny"] is True
    assert generator["random_weights"] is True and scorer["random_weights"] is True
    assert by_role["embedder"]["tiny"] is False and by_role["embedder"]["random_weights"] is False
    for report in body["models"]:
        assert report["present"] is True and report["loadable"] is True, report
        assert report["missing"] == [] and report["total_bytes"] > 0
    weights = {f["path"]: f for f in generator["files"]}["tangoflux.safetensors"]
    data = (models / "tiny-tangoflux" / "tangoflux.safetensors").read_bytes()
    assert weights["bytes"] == len(data)
    assert weights["sha256"] == hashlib.sha256(data).hexdigest()
    text = {f["path"]: f for f in generator["files"]}["text_encoder/config.json"]
    assert text["sha256"] is None, "only weight files are hashed"


def test_check_without_hash_or_load_reports_files_only(built: tuple[Path, Path]) -> None:
    _, models = built
    settings = Settings.model_validate({"models": {"dir": str(models)}})
    reports = check_models(settings, load=False, hash_weights=False)
    assert all(r.loadable is None and r.ok for r in reports)
    assert all(f.sha256 is None for r in reports for f in r.files)


def test_tiny_models_not_built_yet_are_usable_but_a_missing_real_dir_is_not(tmp_path: Path) -> None:
    settings = Settings.model_validate({"models": {"dir": str(tmp_path / "empty")}})
    generator, scorer, _ = check_models(settings, load=False)
    assert generator.ok and scorer.ok and not generator.present
    assert "first start builds it" in generator.note
    real = Settings.model_validate({"models": {"dir": str(tmp_path), "tangoflux": str(tmp_path / "nope"),
                                               "clap": str(tmp_path / "nope-clap")}})
    generator, scorer, _ = check_models(real, load=False)
    assert not generator.ok and not scorer.ok and generator.tiny is False


def test_check_names_missing_files_and_load_errors_and_exits_1(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, models = built
    no_vae = Path(shutil.copytree(models / "tiny-tangoflux", tmp_path / "no-vae"))
    (no_vae / "vae.safetensors").unlink()
    broken_clap = Path(shutil.copytree(models / "tiny-clap", tmp_path / "broken-clap"))
    (broken_clap / "config.json").write_text('{"model_type": "bert"}')
    config = tmp_path / "appliance.toml"
    write_config(config, {"models": {"dir": str(models), "tangoflux": str(no_vae),
                                     "clap": str(broken_clap)}})
    code, body = _run_json(capsys, ["models", "check", "--config", str(config), "--json"])
    assert code == 1 and body["ok"] is False
    generator, scorer, embedder = body["models"]
    assert generator["missing"] == ["vae.safetensors"] and generator["ok"] is False
    assert scorer["present"] is True and scorer["loadable"] is False
    assert "model_type must be 'clap'" in scorer["error"]
    assert embedder["ok"] is True


def _fetch_cli(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "appliance.toml"
    write_config(config, {"models": {"dir": str(tmp_path / "models")}})
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "APPLIANCE_"))}
    return subprocess.run(
        [sys.executable, "-m", "appliance", "models", "fetch", "--config", str(config), "--json"],
        env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


def test_fetch_with_hub_offline_mode_fails_with_a_typed_error(tmp_path: Path) -> None:
    done = _fetch_cli(tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == "model_download_failed" and "HF_HUB_OFFLINE" in body["message"]


def test_fetch_without_network_fails_with_a_typed_error(tmp_path: Path) -> None:
    """The hub endpoint is a closed loopback port: what a machine without internet sees."""
    done = _fetch_cli(tmp_path, {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == "model_download_failed"
    assert TANGOFLUX_REPO in body["message"] and "internet" in body["message"]


def test_fetch_lays_out_hub_snapshots_as_the_loaders_expect(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    """A stand-in for the hub serves the tiny builds as the three repositories."""
    _, models = built
    sources = {TANGOFLUX_REPO: models / "tiny-tangoflux", TEXT_ENCODER_REPO: models /
               "tiny-tangoflux" / "text_encoder", CLAP_REPOS[0]: models / "tiny-clap"}
    asked: list[tuple[str, list[str]]] = []

    def download(*, repo_id: str, local_dir: str, allow_patterns: list[str],
                 revision: str | None) -> str:
        asked.append((repo_id, allow_patterns))
        for path in sources[repo_id].iterdir():
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                Path(local_dir).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(local_dir) / path.name)
        return local_dir

    result = fetch_models(tmp_path / "models", download=download)
    assert [repo for repo, _ in asked] == [TANGOFLUX_REPO, TEXT_ENCODER_REPO, CLAP_REPOS[0]]
    assert not any("*.safetensors" in patterns for _, patterns in asked), "no flan-t5 weights"
    assert result.tangoflux_dir == tmp_path / "models" / "TangoFlux"
    assert result.clap_dir == tmp_path / "models" / "clap-htsat-unfused"
    clap_settings = json.loads((result.clap_dir / "appliance.json").read_text())
    assert clap_settings == {"model_name": CLAP_REPOS[0], "random_weights": False}
    settings = Settings.model_validate({"models": {
        "dir": str(tmp_path / "models"), "tangoflux": str(result.tangoflux_dir),
        "clap": str(result.clap_dir)}})
    generator, scorer, _ = check_models(settings)
    assert generator.ok and generator.loadable and not generator.tiny
    assert scorer.ok and scorer.loadable and scorer.name == CLAP_REPOS[0]
    assert scorer.random_weights is False, "fetched CLAP is marked as real weights"
