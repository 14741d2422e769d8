"""Config loading: YAML, overrides, unknown keys, errors with key paths and lines; example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetless.config import apply_overrides, load_config, parse_override
from forgetless.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.lora.mode == "lora" and cfg.model.trust_remote_code is False


def test_override_values_are_yaml() -> None:
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("lora.target_modules=[q_proj, v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    assert parse_override("model.trust_remote_code=true") == (["model", "trust_remote_code"], True)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e=x"]) == {"a": {"b": 1, "c": 2}, "d": {"e": "x"}}


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n")
    cfg = load_config(f, ["train.lr=5e-5", "lora.r=4"])
    assert cfg.train.lr == 5e-5 and cfg.lora.r == 4


def test_unknown_key_names_path_and_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\ntrain:\n  lr: 0.001\n  learning_rat: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert f"{f}:4: train.learning_rat: unknown key" in msg


def test_every_problem_is_listed(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("lora:\n  r: zero\n  dropout: 2\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    probs = e.value.problems
    assert len(probs) == 3
    assert any(p.startswith(f"{f}:2: lora.r:") for p in probs)
    assert any(p.startswith(f"{f}:3: lora.dropout:") for p in probs)
    assert any(p == f"{f}:4: bogus: unknown key" for p in probs)


def test_unknown_override_key_rejected() -> None:
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        load_config(None, ["train.nope=1"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["train.lr"])


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  epochs: 1\n  lr: 0.5\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.problems == [
        f"{f}:4: train.lr: duplicate key (first given on line 2)",
        f"{f}:6: seed: duplicate key (first given on line 5)",
    ]


def test_a_bad_override_is_reported_against_the_override_not_a_yaml_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\nlora:\n  r: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ["train.lr=fast", "lora.r=4"])
    (prob,) = e.value.problems
    assert prob.startswith("override 'train.lr=fast': train.lr: ") and f"{f}:" not in prob
    # A bad value from the YAML itself still names its line.
    f.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=rf"{f}:2: train.lr: "):
        load_config(f, ["lora.r=4"])


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{f}:\d+: not valid YAML"):
        load_config(f)


def test_relative_data_paths_resolve_against_yaml(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.yaml"
    f.write_text("data:\n  train: [d.jsonl]\n  eval_qa: q.jsonl\n")
    cfg = load_config(f)
    assert cfg.data.train == [tmp_path / "sub" / "d.jsonl"]
    assert cfg.data.eval_qa == tmp_path / "sub" / "q.jsonl"


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    # Example configs start with the command that runs them.
    assert path.read_text().lstrip().startswith("# forgetless")
    for f in cfg.data.train + [p for p in (cfg.data.eval_qa, cfg.data.eval_mc) if p]:
        assert f.exists(), f"{path.name} names a missing file {f}"


def test_there_are_example_configs() -> None:
    assert (EXAMPLES / "quickstart.yaml").exists()


def test_every_config_field_has_a_description() -> None:
    """`forgetless validate` and the docs rely on it: no field without a description."""
    from pydantic import BaseModel

    from forgetless.config import RunConfig

    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            if not f.description:
                missing.append(prefix + name)
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert not missing, f"fields without a description: {missing}"


def test_replay_and_kl_on_by_default_and_off_together() -> None:
    cfg = load_config(None)
    assert (cfg.train.replay_ratio, cfg.train.kl_to_base, cfg.train.replay_ce) == (0.3, 1.0, False)
    off = load_config(None, ["train.replay_ratio=0"])
    assert (off.train.replay_ratio, off.train.kl_to_base) == (0.0, 0.0)  # the default KL goes with replay
    explicit = load_config(None, ["train.replay_ratio=0", "train.kl_to_base=2"])
    assert explicit.train.kl_to_base == 2.0  # set by the user: kept, and the pipeline asks for replay
