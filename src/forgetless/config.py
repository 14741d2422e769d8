"""Load a run config: YAML in, ``key.sub=value`` overrides, pydantic validation, precise errors.

Unknown and duplicate keys are rejected naming their key path, and every problem names the YAML
line it sits on (or the command-line override it came from),
so ``forgetless validate`` can list all of them at once instead of failing one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .budget import BudgetConfig
from .curate.config import CurateConfig
from .errors import ConfigError
from .evaluate.config import EvalConfig
from .io import read_text_file
from .model_config import ModelConfig
from .tokens.config import TokensConfig
from .train.config import DataConfig, LoraSettings, TrainConfig


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RunConfig(Strict):
    """One forgetless job: every stage of the pipeline, top to bottom."""

    run_dir: Path = Field(Path("runs/run"), description="Folder this run writes everything into.")
    seed: int = Field(0, description="Seed for data order, LoRA init and sampling; a rerun with the same seed is identical.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model and how to load it.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and domain-evaluation data.")
    curate: CurateConfig = Field(default_factory=CurateConfig, description="Cleaning, deduplication and replay mixing.")
    tokens: TokensConfig = Field(default_factory=TokensConfig, description="Domain vocabulary extension.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter (PEFT) settings.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation, checkpoints and regularizers.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Domain and general suites run at every checkpoint.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Forgetting budget: how much general ability may be traded.")


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML mapping to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = path + (str(i),)
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    if root is not None:
        walk(root, ())
    return lines


def _duplicate_keys(text: str, file: str) -> list[str]:
    """One problem per key given twice in the same YAML mapping (PyYAML would keep the last silently)."""
    problems: list[str] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return problems

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                name, line = str(k.value), k.start_mark.line + 1
                if name in seen and name != "<<":
                    key = ".".join(path + (name,))
                    problems.append(f"{file}:{line}: {key}: duplicate key (first given on line {seen[name]})")
                seen.setdefault(name, line)
                walk(v, path + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (str(i),))

    if root is not None:
        walk(root, ())
    return problems


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML, so ``3``, ``1e-4``, ``true``, ``[a, b]`` all work."""
    if "=" not in item:
        raise ConfigError([f"override '{item}': expected key.sub=value"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"override '{item}': empty key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError([f"override '{item}': value is not valid YAML ({e})"]) from None
    if isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; on a command line everyone means the number.
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in a nested dict (creating sub-dicts); validation happens later."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return data


def _format_errors(
    err: ValidationError, lines: dict[tuple[str, ...], int], file: str | None, overrides: list[str] | None = None
) -> list[str]:
    # The last override that set a key (or one of its parents) is where a bad value came from.
    set_by: dict[tuple[str, ...], str] = {}
    for item in overrides or []:
        set_by[tuple(parse_override(item)[0])] = item
    problems = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join(loc) or "(root)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        origin = next((set_by[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in set_by), None)
        if origin is not None:
            problems.append(f"override '{origin}': {path}: {msg}")
            continue
        # Point at the deepest key that exists in the YAML (a missing key has no line of its own).
        line = None
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{file}:{line}: " if (file and line) else ""
        problems.append(f"{where}{path}: {msg}")
    return problems


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a run config from YAML (or defaults when ``path`` is None), then apply overrides.

    Relative data paths in the YAML are resolved against the YAML file's folder, so a config works
    from any working directory. Raises :class:`ConfigError` listing every problem with its key path.
    """
    overrides = overrides or []
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    file = None
    if path is not None:
        file = str(path)
        text = read_text_file(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{file}:{mark.line + 1}: " if mark else f"{file}: "
            raise ConfigError([f"{where}not valid YAML: {getattr(e, 'problem', e)}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{file}: top level must be a mapping of sections, got {type(loaded).__name__}"])
        if dups := _duplicate_keys(text, file):
            raise ConfigError(dups, file=file)
        data = loaded
        lines = _key_lines(text)
    data = apply_overrides(data, overrides)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, lines, file, overrides), file=file) from None
    if path is not None:
        cfg = resolve_paths(cfg, Path(path).resolve().parent)
    return cfg


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make relative file paths in the config absolute against ``base`` (the YAML's folder)."""

    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base / p).resolve()

    d = cfg.data
    d.train = [fix(p) for p in d.train]  # type: ignore[misc]
    d.eval_qa = fix(d.eval_qa)
    d.eval_mc = fix(d.eval_mc)
    d.eval_text = fix(d.eval_text)
    d.replay = fix(d.replay)
    cfg.curate.replay_file = fix(cfg.curate.replay_file)
    cfg.tokens.terms_file = fix(cfg.tokens.terms_file)
    if not cfg.run_dir.is_absolute():
        # run_dir is relative to the working directory, like every CLI tool's output folder.
        cfg.run_dir = Path.cwd() / cfg.run_dir
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
