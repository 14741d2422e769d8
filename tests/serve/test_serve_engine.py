"""Engine tests without HTTP: exception fallback, cancellation, stop-string hold-back."""

from __future__ import annotations

import queue

import pytest
import torch
from peft import LoraConfig, get_peft_model

from forgetless.serve.engine import Engine
from forgetless.serve.jobs import Event, GenParams, Job
from forgetless.serve.metrics import ServeMetrics
from forgetless.serve.prompts import encode_chat
from forgetless.testing import tiny_model, tiny_tokenizer


@pytest.fixture()
def engine():
    tok = tiny_tokenizer()
    torch.manual_seed(3)
    pm = get_peft_model(tiny_model(len(tok)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    eng = Engine(pm, tok, adapter_name="default", router=None, metrics=ServeMetrics(), batch_window_s=0.05).start()
    yield eng
    eng.stop()


def run(eng: Engine, want: str, text: str, **params) -> list[Event]:
    events: queue.Queue[Event] = queue.Queue()
    eng.submit(Job(prompt=encode_chat(eng.tok, [{"role": "user", "content": text}]), want=want,
                   params=GenParams(**{"max_tokens": 6, **params}), deliver=events.put))  # fmt: skip
    out = []
    while not out or out[-1].kind not in ("done", "error"):
        out.append(events.get(timeout=30))
    return out


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if e.kind == "delta")


def test_exception_on_the_adapter_path_falls_back_to_base(engine):
    base_answer = text_of(run(engine, "base", "hello world"))
    real_forward = engine.model.forward

    def failing(*args, **kwargs):
        if any(n != "__base__" for n in kwargs.get("adapter_names", [])):
            raise RuntimeError("adapter exploded")
        return real_forward(*args, **kwargs)

    engine.model.forward = failing
    events = run(engine, "adapter", "hello world")
    assert events[0].kind == "start" and events[0].route == "fallback"
    assert events[-1].kind == "done" and text_of(events) == base_answer
    assert engine.metrics.fallbacks.labels("exception")._value.get() == 1
    engine.model.forward = real_forward
    # No PEFT hook is left behind: the adapter answers again, differently from the base.
    assert text_of(run(engine, "adapter", "hello world")) != base_answer


def test_a_failing_base_is_an_error_event_not_a_hang(engine):
    def broken(*args, **kwargs):
        raise RuntimeError("base exploded")

    engine.model.forward = broken
    events = run(engine, "base", "hello")
    assert events[-1].kind == "error" and "RuntimeError" in events[-1].error


def test_max_tokens_and_eos_finish_reasons(engine):
    events = run(engine, "adapter", "cat dog", max_tokens=3)
    done = events[-1]
    assert done.finish_reason in ("length", "stop") and done.completion_tokens <= 3
    if done.finish_reason == "length":
        assert done.completion_tokens == 3


def test_one_bad_row_fails_only_its_own_request(engine):
    """A seed torch cannot take fails that request; the others in the same micro-batch finish normally."""
    alone = [text_of(run(engine, "adapter", q, temperature=1.0, seed=7)) for q in ("hello", "cat dog", "red green")]
    queues: list[queue.Queue[Event]] = []
    for q, seed in [("hello", 7), ("zorvanex", 2**70), ("cat dog", 7), ("red green", 7)]:
        events: queue.Queue[Event] = queue.Queue()
        queues.append(events)
        engine.submit(Job(prompt=encode_chat(engine.tok, [{"role": "user", "content": q}]), want="adapter",
                          params=GenParams(max_tokens=6, temperature=1.0, seed=seed), deliver=events.put))  # fmt: skip
    results = []
    for events in queues:
        out = [events.get(timeout=30)]
        while out[-1].kind not in ("done", "error"):
            out.append(events.get(timeout=30))
        results.append(out)
    assert results[1][-1].kind == "error"
    assert [r[-1].kind for i, r in enumerate(results) if i != 1] == ["done"] * 3
    assert [text_of(r) for i, r in enumerate(results) if i != 1] == alone
    assert engine.metrics.batch_size._sum.get() >= 4  # they did share a batch (window 50 ms)
    # Not an adapter failure: no fallback is counted.
    assert engine.metrics.fallbacks.labels("exception")._value.get() == 0


def test_tiny_temperature_samples_the_top_token(engine):
    greedy = text_of(run(engine, "base", "hello world"))
    assert text_of(run(engine, "base", "hello world", temperature=1e-300, seed=1)) == greedy


def test_a_request_whose_stream_breaks_does_not_fail_the_others(engine):
    def broken(ev: Event) -> None:
        raise RuntimeError("client stream gone")

    good: queue.Queue[Event] = queue.Queue()
    engine.submit(Job(prompt=encode_chat(engine.tok, [{"role": "user", "content": "hi"}]), want="adapter",
                      params=GenParams(max_tokens=4), deliver=broken))  # fmt: skip
    engine.submit(Job(prompt=encode_chat(engine.tok, [{"role": "user", "content": "cat dog"}]), want="adapter",
                      params=GenParams(max_tokens=4), deliver=good.put))  # fmt: skip
    out = [good.get(timeout=30)]
    while out[-1].kind not in ("done", "error"):
        out.append(good.get(timeout=30))
    assert out[-1].kind == "done" and text_of(out) == text_of(run(engine, "adapter", "cat dog", max_tokens=4))
