"""``forgetless distill TEACHER_RUN --student MODEL``: sequence-level distillation through the normal pipeline.

The tuned teacher (its merged model: adapter at the selected scale) answers, greedily,

* every domain prompt of its training data (the user turn of each chat / prompt-response
  record), and
* forgetless' replay prompts (general questions), when the student's config mixes replay in;

those answers become the student's training data (``<student run>/distill/domain.jsonl`` and
``replay.jsonl``), next to the teacher's plain-text documents, which carry the facts no prompt
asks about. The student is then trained by :func:`forgetless.pipeline.run_pipeline` with the
teacher's resolved config (same LoRA, budget, evaluation sets, checkpoint selection) pointed at the
student model and the distilled data, so it gets the same forgetting controls, budget verdict and
report, and its drift is measured against its own base. The held-out evaluation questions are
never shown to the teacher: they stay a test set.

``<student run>/distill.json`` names the teacher run and its adapter hash: the registry's lineage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console

from . import artifacts
from .errors import ForgetlessError
from .hashing import adapter_hash, sha256_file
from .io import atomic_write_json, atomic_write_text, write_jsonl


def domain_prompts(train_paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(prompts, documents)`` of a teacher's training files.

    A prompt is ``{"messages": [...turns before the last assistant turn], "source": "file:line"}``;
    a document is a plain-text record kept as it is. Repeated prompts are asked once.
    """
    from .data import expand_paths, load_examples

    prompts, docs, seen = [], [], set()
    for ex in load_examples(expand_paths(train_paths)):
        if not ex.is_chat:
            docs.append({"text": ex.text})
            continue
        msgs = ex.messages or []
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        context = msgs[:last]
        key = json.dumps(context)
        if any(m["role"] == "user" for m in context) and key not in seen:
            seen.add(key)
            prompts.append({"messages": context, "source": ex.source})
    return prompts, docs


def teacher_answers(model: Any, tok: Any, conversations: list[list[dict[str, str]]], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """The teacher's greedy answer to each conversation (text, special tokens removed)."""
    from .evaluate.scoring import generate_greedy

    ids = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"] for c in conversations]
    outs = generate_greedy(model, tok, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tok.decode(o, skip_special_tokens=True).strip() for o in outs]


def distill(
    teacher_run: str | Path,
    student: str,
    run_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    max_new_tokens: int = 64,
    keep_documents: bool = True,
    replay_prompts: int = 0,
    console: Console | None = None,
    allow_remote_code: bool = False,
) -> dict[str, Any]:
    """Generate the teacher's answers, then train ``student`` on them with the normal pipeline; returns its summary.

    ``replay_prompts``: how many of forgetless' replay prompts the teacher answers (0: all of them).
    ``allow_remote_code``: needed when the teacher was trained with ``model.trust_remote_code``.
    """
    from .config import load_config
    from .deploy.variants import Target, load_target_tokenizer, load_variant
    from .pipeline import run_pipeline
    from .runfolder import read_run_folder

    console = console or Console(stderr=True)
    run = read_run_folder(teacher_run)
    teacher_run, tcfg = run.path, run.config
    run.require_adapter()
    # The teacher loads as it was trained (revision, remote-code setting).
    t = Target(run.model(allow_remote_code=allow_remote_code), run.path)
    run_dir = Path(run_dir).resolve()
    if (run_dir / artifacts.METRICS).exists():
        raise ForgetlessError(f"{run_dir} already holds a run; choose a new folder with --out")

    # The student's config: the teacher's, pointed at the student and the distilled data. Overrides
    # apply last, so a user can change anything (budget, steps, LoRA rank) for the student.
    data_dir = run_dir / artifacts.DISTILL_DATA_DIR
    d = tcfg.model_dump(mode="json")
    d["run_dir"] = str(run_dir)
    # The student is another model: the teacher's revision and remote-code permission do not carry over.
    d["model"] = {**d["model"], "name": student, "revision": None, "trust_remote_code": False}
    d["tokens"] = {**d["tokens"], "enabled": False}  # the teacher's added vocabulary belongs to its tokenizer
    d["data"] = {**d["data"], "train": [str(data_dir / "domain.jsonl")], "replay": None}
    cfg_path = data_dir / "student_config.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(d, sort_keys=False))
    cfg = load_config(cfg_path, overrides or [])
    want_replay = cfg.train.replay_ratio > 0 and cfg.data.replay is None

    prompts, docs = domain_prompts(tcfg.data.train)
    if not prompts:
        raise ForgetlessError(f"{teacher_run}: the teacher's training data has no prompts (chat or prompt/response records) to answer")
    console.print(f"[bold]distill[/] teacher {teacher_run.name} answers {len(prompts)} domain prompts" + (" and the replay prompts" if want_replay else ""))
    tok = load_target_tokenizer(t)
    teacher = load_variant(t.in_fp32(), "merged", tok=tok)
    bs = tcfg.eval.batch_size
    answers = teacher_answers(teacher, tok, [p["messages"] for p in prompts], max_new_tokens=max_new_tokens, batch_size=bs)
    domain = [{"messages": p["messages"] + [{"role": "assistant", "content": a}], "teacher_source": p["source"]}
              for p, a in zip(prompts, answers) if a]  # fmt: skip
    domain += docs if keep_documents else []
    write_jsonl(data_dir / "domain.jsonl", domain)
    n_replay = 0
    if want_replay:
        from .curate.replay import load_prompts

        rp = load_prompts()[: replay_prompts or None]
        ranswers = teacher_answers(teacher, tok, [[{"role": "user", "content": p["prompt"]}] for p in rp], max_new_tokens=max_new_tokens, batch_size=bs)
        replay = [{"prompt": p["prompt"], "response": a, "teacher_source": p["id"]} for p, a in zip(rp, ranswers) if a]
        write_jsonl(data_dir / "replay.jsonl", replay)
        n_replay = len(replay)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"replay": data_dir / "replay.jsonl"})})
    del teacher
    info = {
        "teacher_run": str(teacher_run),
        "teacher_base": t.base_model,
        "teacher_adapter_sha256": adapter_hash(run.adapter_dir),
        "student": student,
        "domain_answers": sum(1 for r in domain if "messages" in r),
        "documents": len(docs) if keep_documents else 0,
        "replay_answers": n_replay,
        "max_new_tokens": max_new_tokens,
        "data_sha256": {p.name: sha256_file(p) for p in sorted(data_dir.glob("*.jsonl"))},
    }
    atomic_write_json(run_dir / artifacts.DISTILL_INFO, info)
    return run_pipeline(cfg, console=console)


def read_distill_info(run_dir: str | Path) -> dict[str, Any] | None:
    """A student run's ``distill.json`` (None for a run that was not distilled)."""
    from .runfolder import read_run_folder

    return read_run_folder(run_dir).read_json(artifacts.DISTILL_INFO)


def register(app: typer.Typer) -> None:
    """Add ``forgetless distill`` to the CLI."""

    @app.command("distill")
    def distill_cmd(
        teacher_run: Annotated[Path, typer.Argument(help="The tuned teacher's run folder.")],
        student: Annotated[str, typer.Option("--student", help="Student base model: an HF id, a folder or an embedded name.")],
        out: Annotated[Optional[Path], typer.Option("--out", help="The student's run folder (default: <teacher>/deploy/distill/<student>).")] = None,
        overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides of the student's config.")] = None,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens of each teacher answer.")] = 64,
        documents: Annotated[bool, typer.Option("--documents/--no-documents", help="Also train on the teacher's plain-text documents.")] = True,
        replay_prompts: Annotated[int, typer.Option(min=0, help="Replay prompts the teacher answers when the student mixes replay in (0: all).")] = 0,
        trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow loading a teacher whose model needs its own code (model.trust_remote_code).")] = False,
    ) -> None:
        """Sequence-level distillation: the teacher's answers train the student through the normal pipeline."""
        from .cli import console

        if out is None:
            # One folder per student model name, path-safe ("HuggingFaceTB/SmolLM2-135M" -> "HuggingFaceTB--SmolLM2-135M").
            safe = re.sub(r"[^A-Za-z0-9._-]+", "--", Path(student).name if Path(student).exists() else student).strip("-.")
            out = teacher_run / artifacts.DEPLOY_DIR / artifacts.DISTILL_DATA_DIR / (safe or "student")
        distill(
            teacher_run, student, out, overrides=overrides, max_new_tokens=max_new_tokens, keep_documents=documents, replay_prompts=replay_prompts, console=console,
            allow_remote_code=trust_remote_code,
        )
