"""The general code suite: write a small Python function; pass@1 by running its unit tests.

Tasks live in ``data/code.v1.jsonl`` (``prompt``, ``entry_point``, ``tests``, and a
``canonical_solution`` that tests use to prove the tests themselves are right). The model's
answer is prefilled with an opening ```` ```python```` fence, so it writes code straight away and
the closing fence ends generation early; the code plus the task's asserts then run in the sandbox
(:mod:`forgetless.evaluate.sandbox`), several programs at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ForgetlessError, InputError
from ..io import iter_jsonl
from .sandbox import UNCONFINED_ENV, RunResult, run_python
from .scoring import chat_prompt_ids, generate_greedy_until

CODE_FILE = Path(__file__).parent / "data" / "code.v1.jsonl"
FENCE = "```python\n"
MAX_NEW_TOKENS = 64  # the suite's functions are 2-6 lines (~15-40 tokens); each decode step costs a full weight read on CPU
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CodeTask:
    """One task: the request, the function name the tests call, and the tests (asserts)."""

    id: str
    prompt: str
    entry_point: str
    tests: str
    canonical_solution: str = ""


def load_code_tasks(path: str | Path = CODE_FILE) -> list[CodeTask]:
    """Read a code-task JSONL, errors naming file/line/field."""
    tasks = []
    for line, rec in iter_jsonl(path):
        for key in ("prompt", "entry_point", "tests"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise InputError("must be a non-empty string", file=path, line=line, field=key)
        tasks.append(
            CodeTask(str(rec.get("id", f"line-{line}")), rec["prompt"], rec["entry_point"], rec["tests"], str(rec.get("canonical_solution", "")))
        )
    return tasks


def extract_code(answer: str) -> str:
    """The code in a model answer that started inside a ```` ```python```` fence.

    Generation stops at the closing fence, so the answer is usually just code; if the model
    wrote prose after a blank line instead of closing the fence, keep only the leading code.
    """
    code = answer.split("```", 1)[0]
    lines: list[str] = []
    for ln in code.splitlines():
        # A non-indented line that is not Python-looking ends the code (explanations, notes).
        if ln and not ln[0].isspace() and not ln.startswith(("def ", "import ", "from ", "class ", "@", "#", ")", "]", "}")) and "=" not in ln:
            break
        lines.append(ln)
    return "\n".join(lines).rstrip() + "\n"


def program_for(task: CodeTask, code: str) -> str:
    """The program the sandbox runs: the candidate code, then the task's asserts."""
    return f"{code}\n\n# --- tests ---\n{task.tests}"


def run_tests(tasks: Sequence[CodeTask], codes: Sequence[str], *, timeout_s: float = TIMEOUT_S, workers: int = 4) -> list[RunResult]:
    """Run each candidate against its task's tests in the sandbox, ``workers`` at a time.

    Raises :class:`ForgetlessError` when the sandbox cannot confine the programs on this kernel.
    """
    # Threads only wait on subprocesses here, so the GIL is not a bottleneck.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda tc: run_python(program_for(tc[0], tc[1]), timeout_s=timeout_s), zip(tasks, codes)))
    refused = next((r for r in results if r.not_run), None)
    if refused is not None:
        # A pass rate of programs that never ran would read as "the model forgot how to code".
        raise ForgetlessError(
            f"code suite not scored: this kernel cannot enforce {', '.join(refused.unconfined)} in the sandbox, and model-written "
            f"code is not run unconfined. Run the evaluation inside a container (the real boundary) and set {UNCONFINED_ENV}=1 "
            "there, or leave 'code' out of eval.general_suites"
        )
    return results


def code_answers(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, tasks: Sequence[CodeTask], *, batch_size: int = 16
) -> list[str]:
    """The model's greedy code for each task (the text after the prefilled fence)."""
    fence = tok(FENCE, add_special_tokens=False)["input_ids"]
    prompts = [chat_prompt_ids(tok, t.prompt) + fence for t in tasks]
    texts = generate_greedy_until(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS, stop_strings=["```"], batch_size=batch_size)
    return [extract_code(t) for t in texts]


def code_passed(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, tasks: Sequence[CodeTask], *, batch_size: int = 16
) -> list[float]:
    """pass@1 per task (greedy, one sample): 1.0 if the generated code passes all asserts."""
    codes = code_answers(model, tok, tasks, batch_size=batch_size)
    return [float(r.passed) for r in run_tests(tasks, codes)]
