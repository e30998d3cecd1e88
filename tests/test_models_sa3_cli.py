"""``appliance models build-tiny | check | fetch`` know Stable Audio 3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import main
from appliance.config import load_settings
from appliance.models.check import check_models
from appliance.models.fetch import SA3_REPOS, fetch_sa3
from testkit.services import free_port

POOL = '[{device = "cpu", model = "tangoflux"}, {device = "cpu", model = "sa3"}]'


def _config(path: Path, models: dict[str, str]) -> Path:
    lines = ["[models]", *(f"{k} = {json.dumps(v)}" for k, v in models.items()),
             "[workers]", f"pool = {POOL}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sa3-cli")
    config = _config(root / "appliance.toml", {"dir": str(root / "models")})
    assert main(["models", "build-tiny", "--config", str(config), "--json"]) == 0
    return root / "models"


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["models", "check", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_check_lists_every_generator_with_the_name_a_request_uses(
    models_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, body = _check(_config(tmp_path / "a.toml", {"dir": str(models_root)}), capsys)
    assert code == 0 and body["ok"] is True, body
    generators = [m for m in body["models"] if m["role"] == "generator"]
    assert [(g["name"], g["family"], g["key"]) for g in generators] == [
        ("tiny-tangoflux", "tangoflux", "tangoflux"), ("tiny-sa3", "sa3", "sa3")]
    sa3 = generators[1]
    assert sa3["loadable"] is True and sa3["random_weights"] is True and sa3["tiny"] is True
    assert {"model_index.json", "transformer/diffusion_pytorch_model.safetensors",
            "tokenizer/tokenizer.json"} <= {f["path"] for f in sa3["files"]}


def test_check_names_the_missing_files_of_an_sa3_snapshot(
    models_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "stable-audio-3-small-sfx"
    shutil.copytree(models_root / "tiny-sa3", broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    code, body = _check(_config(tmp_path / "b.toml", {"dir": str(models_root),
                                                      "sa3": str(broken)}), capsys)
    assert code == 1 and body["ok"] is False
    sa3 = next(m for m in body["models"] if m["family"] == "sa3")
    assert sa3["missing"] == ["vae/diffusion_pytorch_model.safetensors"] and sa3["tiny"] is False


def test_fetched_sa3_snapshot_is_named_after_its_repository_and_loads(
    models_root: Path, tmp_path: Path,
) -> None:
    def download(*, repo_id: str, local_dir: str, **_: Any) -> None:  # the hub, offline
        assert repo_id == SA3_REPOS["small-sfx"]
        shutil.copytree(models_root / "tiny-sa3", local_dir, dirs_exist_ok=True)

    path = fetch_sa3(tmp_path / "models", "small-sfx", download=download)
    assert path.name == "stable-audio-3-small-sfx"
    settings = load_settings(_config(tmp_path / "c.toml", {"dir": str(models_root),
                                                           "sa3": str(path)}), environ={})
    sa3 = next(r for r in check_models(settings) if r.family == "sa3")
    assert sa3.name == "stabilityai/stable-audio-3-small-sfx"
    assert sa3.ok and sa3.loadable and sa3.random_weights is False


def test_fetch_sa3_offline_names_the_gated_repository_and_the_licence(tmp_path: Path) -> None:
    config = _config(tmp_path / "d.toml", {"dir": str(tmp_path / "models")})
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "APPLIANCE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "models", "fetch", "--no-tangoflux", "--sa3",
         "small-sfx", "--config", str(config), "--json"],
        env={**clean, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == "model_download_failed"
    assert "stabilityai/stable-audio-3-small-sfx" in body["message"]
    assert "gated" in body["message"] and "Community Licence" in body["message"]
