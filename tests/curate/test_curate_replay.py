"""Replay prompts, self-generated replay (cached) and replay mixing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless.curate import replay
from forgetless.curate.clean import words
from forgetless.curate.config import CurateConfig
from forgetless.curate.dedup import shingles
from forgetless.curate.pipeline import run_curate
from forgetless.testing import save_tiny_model, tiny_model, tiny_tokenizer

EVAL_PROMPTS = Path(replay.__file__).resolve().parents[1] / "evaluate" / "data" / "general_prompts.v1.jsonl"


def _jaccard(a: str, b: str, k: int = 3) -> float:
    sa, sb = set(shingles(words(a), k)), set(shingles(words(b), k))
    return len(sa & sb) / max(1, len(sa | sb))


def test_replay_prompts_are_varied_and_unique() -> None:
    prompts = replay.load_prompts()
    assert len(prompts) == 200
    assert len({p["id"] for p in prompts}) == 200
    assert len({" ".join(words(p["prompt"])) for p in prompts}) == 200
    # Round-robin by category: the first six prompts cover all six categories.
    assert len({p["category"] for p in prompts[:6]}) == 6


@pytest.mark.skipif(not EVAL_PROMPTS.exists(), reason="general evaluation prompts not written yet")
def test_replay_prompts_do_not_leak_the_general_eval_set() -> None:
    evals = [json.loads(x)["prompt"] for x in EVAL_PROMPTS.read_text(encoding="utf-8").splitlines() if x.strip()]
    norm = {" ".join(words(e)) for e in evals}
    for p in replay.load_prompts():
        assert " ".join(words(p["prompt"])) not in norm, p
        worst = max(evals, key=lambda e: _jaccard(p["prompt"], e))
        # Same question with one number changed ("square root of 81" vs "of 64") scores >= 0.6.
        assert _jaccard(p["prompt"], worst) < 0.5, (p["prompt"], worst)


def test_mixing_arithmetic_hand_worked() -> None:
    assert replay.replay_count(80, 0.2) == 20  # 20 / (80 + 20) = 0.2
    assert replay.replay_count(6, 0.25) == 2
    assert replay.replay_count(0, 0.5) == 0
    assert replay.interleave_positions(6, 2) == [2, 4]
    assert replay.interleave_positions(3, 0) == []


def test_trim_truncated_answer() -> None:
    assert replay._trim_truncated("One. Two! Three is cut") == "One. Two!"
    assert replay._trim_truncated("no sentence end") == "no sentence end"


def test_self_generated_replay_is_cached_per_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    (tmp_path / "replay").mkdir()
    tok, model = tiny_tokenizer(), tiny_model(len(tiny_tokenizer()))
    import forgetless.evaluate.scoring as scoring

    calls: list[int] = []
    real = scoring.generate_greedy

    def counting(model, tok, prompts, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(prompts))
        return real(model, tok, prompts, **kw)

    monkeypatch.setattr(scoring, "generate_greedy", counting)
    first = replay.self_generated_replay(model, tok, n=3, max_new_tokens=4, cache_key="tiny", batch_size=2)
    assert calls == [2, 1]
    assert all(r["replay"] is True and r["messages"][0]["role"] == "user" for r in first)
    prompts = replay.load_prompts()
    assert [r["replay_id"] for r in first] == [p["id"] for p in prompts[:3]][: len(first)]
    again = replay.self_generated_replay(model, tok, n=3, max_new_tokens=4, cache_key="tiny", batch_size=2)
    assert again == first and calls == [2, 1]  # served from the cache
    replay.self_generated_replay(model, tok, n=5, max_new_tokens=4, cache_key="tiny", batch_size=8)
    assert calls == [2, 1, 2]  # only the two new prompts are generated
    # Another base model (fingerprint) does not reuse these answers.
    replay.self_generated_replay(model, tok, n=1, max_new_tokens=4, cache_key="other", batch_size=8)
    assert calls == [2, 1, 2, 1]


def _docs(n: int) -> list[dict[str, str]]:
    return [{"text": f"Station {i} measured {i * 3} millimetres of rain near lake L{i}q during the storm season."} for i in range(n)]


def test_replay_from_file_mixed_at_ratio(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _docs(6)))
    rp = tmp_path / "replay.jsonl"
    rp.write_text("".join(json.dumps({"prompt": f"general question {i}", "response": f"answer {i}"}) + "\n" for i in range(5)))
    cfg = CurateConfig(replay="file", replay_file=rp, replay_ratio=0.25)
    res = run_curate([data], tmp_path / "out", cfg)
    out = [json.loads(x) for x in res.kept_path.read_text().splitlines()]
    assert [bool(r.get("replay")) for r in out] == [False, False, True, False, False, True, False, False]
    assert out[2]["prompt"] == "general question 0" and out[2]["replay_id"] == "replay.jsonl:1"
    c = res.report["counts"]
    assert (c["kept"], c["replay_added"], c["written"]) == (6, 2, 8)
    assert res.report["replay"]["requested"] == 2


def test_replay_file_errors_name_file_and_line(tmp_path: Path) -> None:
    from forgetless.errors import InputError

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _docs(3)))
    rp = tmp_path / "replay.jsonl"
    rp.write_text('{"text": "fine general text"}\n{"text": 3}\n')
    with pytest.raises(InputError, match=r"replay.jsonl:2: field 'text'"):
        run_curate([data], tmp_path / "out", CurateConfig(replay="file", replay_file=rp, replay_ratio=0.5))


def test_self_replay_in_pipeline_with_local_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    folder = save_tiny_model(tmp_path / "tiny")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _docs(4)))
    cfg = CurateConfig(replay="self", replay_ratio=0.5, replay_max_new_tokens=8)
    res = run_curate([data], tmp_path / "out", cfg, model_name=str(folder))
    out = [json.loads(x) for x in res.kept_path.read_text().splitlines()]
    n_replay = sum(1 for r in out if r.get("replay"))
    assert res.report["replay"]["requested"] == 4
    assert n_replay == res.report["counts"]["replay_added"] == res.report["replay"]["written"]
    assert n_replay >= 1 and len(out) == 4 + n_replay
    assert list((tmp_path / "cache" / "replay").glob("*.jsonl"))


@pytest.mark.slow
def test_self_generated_replay_real_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded SmolLM2 answers general prompts sensibly (a short greedy answer each)."""
    from forgetless.models import load_model, load_tokenizer, weights_fingerprint

    monkeypatch.setattr(replay, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    (tmp_path / "replay").mkdir()
    name = "smollm2-135m-instruct"
    model, tok = load_model(name), load_tokenizer(name)
    recs = replay.self_generated_replay(model, tok, n=2, max_new_tokens=10, cache_key=weights_fingerprint(name), batch_size=2)
    assert len(recs) == 2
    answers = [r["messages"][1]["content"] for r in recs]
    assert all(len(words(a)) >= 3 for a in answers), answers
    assert all("<|im_end|>" not in a for a in answers)
