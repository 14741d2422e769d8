"""`forgetless serve` command line: bad targets are one clear error, never a traceback or a server."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from forgetless.cli import app
from forgetless.errors import ForgetlessError
from forgetless.serve.cli import target_resolver


def test_serve_on_a_missing_or_non_run_folder_is_a_user_error(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--api-key", "k"])
    assert isinstance(res.exception, ForgetlessError) and "does not exist" in str(res.exception)
    res = runner.invoke(app, ["serve", str(tmp_path), "--api-key", "k"])
    assert isinstance(res.exception, ForgetlessError) and "config.resolved.yaml" in str(res.exception)


def test_target_resolver(tmp_path):
    assert target_resolver(str(tmp_path))() == tmp_path.resolve()
    with pytest.raises(ForgetlessError, match="alias"):
        target_resolver("registry:")


def test_max_queue_wait_must_be_positive(tmp_path):
    res = CliRunner().invoke(app, ["serve", str(tmp_path), "--api-key", "k", "--max-queue-wait", "0"])
    assert isinstance(res.exception, ForgetlessError) and "--max-queue-wait" in str(res.exception)
