"""Config sections for the training data and for training itself.

Defaults lean towards not forgetting: a low-rank adapter on a frozen base, weight decay, dropout,
clipping and a short warmup. Each trade-off is explained next to its field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# All linear layers of a Llama/Mistral/Qwen-style block. Attention-only LoRA learns new facts
# poorly; the MLP holds most factual memory, so the default adapts both.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_PRESETS = {
    "all-linear": ALL_LINEAR,
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Training data and the domain evaluation sets."""

    train: list[Path] = Field(
        default_factory=list,
        description="Training files or folders: JSONL with 'text', 'messages' or 'prompt'/'response'; .txt/.md files.",
    )
    replay: Path | None = Field(
        None,
        description="General 'replay' data (same formats) mixed into training at train.replay_ratio. None with replay_ratio > 0: the base model's own answers to forgetless' replay prompts (generated once, cached).",
    )
    eval_qa: Path | None = Field(
        None, description="Held-out domain QA (JSONL: 'question', 'answer'): exact match, token F1, ROUGE-L."
    )
    eval_mc: Path | None = Field(
        None, description="Held-out domain multiple choice (JSONL: 'question', 'choices', 'answer' index): accuracy."
    )
    eval_text: Path | None = Field(
        None, description="Held-out domain text (same formats as train) for perplexity; defaults to eval_qa answers."
    )
    max_length: int = Field(256, ge=16, description="Maximum tokens per training example; longer ones are truncated.")
    doc_pairs: bool = Field(
        False,
        description="Also train on each plain-text document's opening followed by each of its later sentences (forgetless.curate.augment), so facts stated far from their subject sit next to it. Measured on one domain and seed so far: a gain inside the noise (docs/benchmarks.md).",
    )
    system_prompt: str | None = Field(
        None,
        description="System prompt for chat data. None keeps the chat template's own default, which is what the model will see when served.",
    )


class LoraSettings(_Section):
    """The adapter. A frozen base plus a small adapter is the first line of defence against forgetting."""

    mode: Literal["lora", "full"] = Field(
        "lora", description="'lora' trains an adapter on a frozen base; 'full' fine-tunes every weight (a baseline to compare against)."
    )
    # r64 with alpha 64 at lr 1e-3 is the recipe that learned the sample domain's held-out questions
    # best under KL-to-base (docs/benchmarks.md, sessions 4-5: 0.333 mean recall over 3 seeds at
    # KL 0.051, against 0.222 for full fine-tuning); r16 at lr 2e-4 learned 0.033 on a new domain.
    r: int = Field(64, ge=1, description="Rank. Higher learns more and can forget more; 8-64 is typical.")
    alpha: float = Field(
        # Measured on the sample domain (bench/forgetting.py, lr 1e-3): r128 with alpha 128 drifted
        # to general KL 0.157 by step 22, r128 or r64 with alpha 64 to 0.080.
        64.0, gt=0,
        description="Scale numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rslora). Raising r and alpha together enlarges every step, like a higher LR.",
    )
    dropout: float = Field(
        # Off by default: PEFT draws a fresh input-sized mask for every adapted layer, and that
        # elementwise work is not sped up by bf16 matmuls. Measured (bench/train.py, 2-core AMX CPU,
        # bf16): dropout 0.05 gives 116 tokens/s, 0 gives 192. Forgetting is bounded by replay, KL to
        # the base, weight decay and the budget instead; 0.05-0.1 helps against overfitting tiny data.
        0.0, ge=0, lt=1, description="Dropout on the adapter input: a mild regularizer against overfitting, at a measured speed cost.",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="Module names to adapt, or a preset: 'all-linear', 'attention', 'mlp'.",
    )
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (slower, sometimes more sample-efficient).")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r), stable at high rank.")


class TrainConfig(_Section):
    """Optimisation, checkpoints, and the regularizers that keep the model close to its base."""

    # Facts need several exposures: packing turns a few hundred short texts into a few dozen rows,
    # so 3 passes were ~30 optimizer steps and learned almost nothing. Measured on three domains
    # (bench/forgetting.py, budget 0.05, held-out QA recall per seed): 15 passes answered pharma
    # 0.667, 0.683; quillmark 0.733; verrand 0.367, 0.217, where 10 passes answered 0.583, 0.483;
    # 0.683; 0.233, 0.100 on the same seeds (7 passes: less again), at the same drift. The cost is
    # time, and 1.5x the passes over the domain rows that the naive baselines get in their 110 steps.
    epochs: float = Field(15.0, gt=0, description="Passes over the training data, replay rows included (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate. Large LRs learn fast and forget fast.")
    batch_size: int = Field(4, ge=1, description="Sequences per device per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay: pulls adapter weights towards zero, i.e. towards the base.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping: caps the size of any single update.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Share of steps spent warming up the LR.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="LR schedule after warmup."
    )
    head_chunk: int = Field(
        # Chunked at every vocabulary size: at Gemma's 262k one batch of 4 x 256 tokens holds
        # 1.07 GB of fp32 logits, and the whole-logits loss keeps several such tensors for the
        # backward (one Gemma-3-270M step: 6.00 GB peak RSS whole, 3.75 GB chunked); at SmolLM2's
        # 49k the chunked step was no slower (2.3 s against 2.4-2.9 s) and 0.4 GB smaller.
        -1, ge=-1,
        description="Labelled positions projected through the LM head at a time in the training loss (LM loss and KL term, checkpointed): "
        "-1 auto (256 for any model with a separate LM head, else whole logits), 0 whole logits.",
    )
    gradient_checkpointing: bool = Field(
        # On, as in TRL's SFTConfig: one SmolLM2-135M step (batch 4 x 256, LoRA r64, chunked head)
        # peaked at 1.76 GB instead of 2.92 GB, for 2.7 s instead of 2.2 s (bench/head_chunk.py
        # --grad-ckpt); the activations otherwise set the run's memory peak.
        True, description="Recompute each layer's activations in the backward pass instead of keeping them: less memory, a slower step."
    )
    packing: bool = Field(True, description="Pack examples into full sequences (with attention boundaries) instead of padding.")
    eval_every: int = Field(0, ge=0, description="Evaluate both suites and checkpoint every N steps (0: about 5 times per run).")
    keep_checkpoints: int = Field(0, ge=0, description="Keep at most this many checkpoints on disk (0: keep all, needed to pick the best).")
    num_threads: int = Field(0, ge=0, description="CPU threads for torch (0: torch's default).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        # Mixed precision: weights, gradients and optimizer state stay fp32; autocast runs the matmuls
        # in bf16. Measured on the 2-core AMX CPU (SmolLM2-135M, LoRA r16, 8 x 256 tokens): 145-153 ->
        # 236-259 tokens/s. Without AMX, bf16 is no faster on a CPU, so auto keeps fp32 there.
        "auto",
        description="Training precision: auto (bf16 mixed precision on a bf16 GPU or an AMX CPU, else fp32), fp32 or bf16.",
    )

    # --- staying close to the base ----------------------------------------------------------
    # On by default: replay + KL-to-base are the controls that measurably hold general behaviour.
    # bench/forgetting.py on the sample domain (110 steps, every LoRA recipe tried): general KL
    # 0.01-0.06 nats/token at the selected checkpoint, against 0.72-0.74 for full fine-tuning
    # and 1.1-1.45 for the same LoRA without them, while still learning the domain
    # (docs/benchmarks.md).
    # Without data.replay the replay rows are the base's own answers to 200 built-in prompts,
    # generated once per base model and cached.
    replay_ratio: float = Field(
        0.3, ge=0, lt=1,
        description="Share of training rows drawn from general replay data (data.replay, or the base's own answers). 0 turns replay, and with it the default KL term, off.",
    )
    kl_to_base: float = Field(
        # 1, not 5: the weight trades domain learning against drift, and the drift moved less than
        # the learning. Measured on the sample domain (bench/forgetting.py: LoRA r64 alpha 64, lr
        # 1e-3, replay 0.3, 110 steps), held-out QA recall / general KL of the selected
        # checkpoint per seed: weight 5: 0.233 / 0.040 (seed 0 only); 2.5: 0.267, 0.200 / 0.045,
        # 0.056; 1: 0.333, 0.283, 0.383 / 0.053, 0.048, 0.051 (full fine-tuning, 3 seeds: mean
        # 0.222 / 0.728). The cost is a higher early peak (0.12-0.14 at step 22 vs 0.09-0.10 at 2.5),
        # which the budget's patience rides out (the peak falls as the domain loss does) and
        # selection never picks.
        1.0, ge=0,
        description="Weight of KL(base || tuned) on replay rows (base = adapter disabled). The most direct guard against drift; needs replay data.",
    )
    kl_control: Literal["auto", "fixed"] = Field(
        # auto steers only when there is something to steer towards: with no budget.general_kl
        # (or no KL term) the weight stays train.kl_to_base, as with fixed.
        "auto",
        description="auto: with a budget.general_kl set, the KL-to-base weight is adapted every step (starting at kl_to_base) so the drift follows its aim, (1 + kl_target_slack) x kl_target x the budget at the start down to kl_target x the budget at the end; fixed: always kl_to_base.",
    )
    kl_weight_min: float = Field(0.05, gt=0, description="Lowest KL-to-base weight the controller may set (train.kl_control: auto).")
    kl_weight_max: float = Field(
        # 100, not 20: on quillmark (budget 0.05, seed 0) the weight reached 20 by step 63 with the
        # drift still above its target; with room up to 100 it peaked at 69, the drift came back
        # under the budget (0.057 -> 0.036 -> 0.032) and the run kept learning to step 105.
        100.0, gt=0, description="Highest KL-to-base weight the controller may set (train.kl_control: auto).",
    )
    kl_gain: float = Field(
        # 0.2 with the relative error clipped at +-0.5: at most x1.105 per step, so about 7 steps to
        # double the weight; a run of ~100 steps can move it 10x either way within 25 steps.
        0.2, gt=0, description="How fast the controller moves: change of log(weight) per step per unit of relative error (clipped at +-0.5).",
    )
    kl_target: float = Field(
        # Under 1: the per-step signal is noisy and the budget is a ceiling every selected
        # checkpoint must respect, so the controller aims a margin below it.
        0.8, gt=0, le=1,
        description="Where the controller aims the drift by the end of the run, as a fraction of budget.general_kl.",
    )
    kl_target_slack: float = Field(
        # The drift of a LoRA run under KL-to-base peaks early and falls back on its own: on the
        # sample domain with a fixed weight of 1 it went 0.143, 0.079, 0.062, 0.053, 0.053 over five
        # evaluations (2.9x, 1.6x, 1.2x, 1.1x, 1.1x a 0.05 budget), learning 0.333 of the held-out
        # answers. Steering at a flat 0.8 x the budget fought that early peak: the weight climbed to
        # 50-80 and the run ended a third under the budget having learned 0.200. With 3 the aim is
        # 4x its final value at the start, 2.1x at 40%, 1.1x at 80%: it shapes the early peak
        # instead of fighting it, and still lands at kl_target x the budget. Measured with the
        # defaults and a 0.05 budget, seed 0, held-out QA recall / general KL, flat -> slack 3:
        # quillmark 0.367 / 0.032 -> 0.533 / 0.039 (weight 0.15-1.4 instead of up to 69), pharma
        # 0.200 / 0.034 -> 0.233 / 0.045 (docs/benchmarks.md, session 13).
        3.0, ge=0,
        description="How far above its final aim the controller lets the drift run early in the run: it aims at "
        "kl_target x budget x (1 + kl_target_slack x (1 - progress)^2). 0: the same aim throughout.",
    )
    replay_every_batch: bool = Field(
        # Off: measured on quillmark (seed 0, budget 0.05, the defaults otherwise), spreading the
        # replay rows over every batch kept the drift lower early (KL 0.072 vs 0.090 at step 21)
        # but the controller then sat at its ceiling and the run learned far less: held-out recall
        # 0.150 at KL 0.034 against 0.367 [0.250, 0.500] at KL 0.032 with the shuffle.
        False,
        description="With a KL term, give every batch its share of the replay rows instead of shuffling them in at random.",
    )
    replay_rotate: bool = Field(
        # Measured on verrand (seed 0, 25 passes, the defaults otherwise): after 10 passes the KL
        # on the 48 replay rows the run drew was 0.024 nats/token, on the 152 pool prompts it never
        # drew 0.047, and on the in-loop general prompts 0.045. The KL term kept the rows it saw
        # close to the base, not the base's behaviour at large, so the controller's replay signal
        # read half the drift it was steering. Rotating on the same domain and seed (15 passes)
        # kept that signal near the general drift and answered as many questions at less drift
        # (0.367 at KL 0.039 against 0.367 at 0.043 without, on the earlier machine image); off
        # until it is measured on the other domains and seeds (docs/benchmarks.md, session 21).
        False,
        description="Rotate through the whole replay pool over the epochs (each epoch trains replay_ratio's share of it, the next rows of a seeded cycle) instead of training one draw from it every epoch.",
    )
    replay_ce: bool = Field(
        # Off: with kl_to_base > 0 a replay row's target is the base's whole next-token
        # distribution, not the one answer it sampled. Cross-entropy on a few hundred greedy
        # answers memorises them and pulls away from that distribution: measured on the sample
        # domain (lr 2e-3, kl_to_base 5, replay 0.3), the KL on replay rows rose from ~0.05 to
        # 0.1-0.3 nats/token within 44 steps while their cross-entropy kept falling.
        False,
        description="Also train replay rows with cross-entropy on their answers when kl_to_base > 0 (without KL they always are).",
    )
    l2sp: float = Field(0.0, ge=0, description="Weight of the L2-SP penalty: squared size of the weight update (LoRA: ||s*B*A||^2).")
    ewc: float = Field(0.0, ge=0, description="Weight of EWC: update penalised by a diagonal Fisher of the base on general (replay) data.")
    ewc_batches: int = Field(8, ge=1, description="Replay batches used to estimate the Fisher for EWC.")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune noise on input embeddings (e.g. 5); None disables it.")
    patience: int = Field(
        # 3, not 2: under KL-to-base the drift peaks early and then falls, as the KL term catches up
        # and the LR decays. Measured on the sample domain (LoRA lr 2e-3, replay 0.3, KL weight 5,
        # budget 0.072, an evaluation every 22 of 110 steps): KL 0.095, 0.100, then 0.070, 0.051,
        # 0.048. Patience 2 stopped that run at step 44 (best inside the budget: QA recall 0.117 at
        # adapter scale 0.75); run on, it reached 0.217 at step 88 inside the budget. Early stop
        # only saves compute: a checkpoint outside the budget is never selected either way.
        3, ge=1, description="Stop early after this many consecutive evaluations outside the forgetting budget that are not "
        "coming back (general KL down 10% or the KL controller's weight up 10% since the previous evaluation do not count)."
    )
    scale_sweep: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        description="Adapter scales (WiSE-FT for adapters) tried after training on the best checkpoint (scale_search: grid); "
        "with scale_search: budget, only its length counts, as the most evaluations to spend. [] disables calibration.",
    )
    # A fixed grid spends its evaluations on one checkpoint at scales chosen before anything was
    # measured; on the sample domain it picked scale 0.5 of the step with the best score at scale 1
    # (recall 0.05) while a later step at ~0.75 was inside the budget too. Aiming at the budget uses
    # the measured KL at scale 1 to pick one scale per checkpoint.
    scale_search: Literal["budget", "grid"] = Field(
        "budget",
        description="budget: with budget.general_kl set, scale each checkpoint that is outside the budget but scores above every "
        "checkpoint inside it to the scale predicted to bring its drift to scale_aim x the budget; grid: try scale_sweep on the best checkpoint.",
    )
    scale_aim: float = Field(0.9, gt=0, le=1, description="Where the budget-aimed scale search aims the drift, as a fraction of budget.general_kl.")

    @model_validator(mode="after")
    def _kl_bounds(self) -> TrainConfig:
        if self.kl_weight_min > self.kl_weight_max:
            raise ValueError(f"kl_weight_min ({self.kl_weight_min}) must not exceed kl_weight_max ({self.kl_weight_max})")
        return self

    @model_validator(mode="after")
    def _kl_needs_replay(self) -> TrainConfig:
        # replay_ratio: 0 alone means "no replay": the default KL term then has nothing to act on
        # and goes off with it. A KL weight the user set explicitly still needs replay (the
        # pipeline says so) rather than being dropped silently.
        if self.replay_ratio == 0 and "kl_to_base" not in self.model_fields_set:
            self.kl_to_base = 0.0
        return self
