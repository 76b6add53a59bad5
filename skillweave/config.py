"""Structured configs: one dataclass per axis, registered in Hydra's ConfigStore.

The YAML files in conf/ fill these schemas; a key typo or a wrong type fails when Hydra composes
the config, before any model is loaded. Stage code receives typed objects (`to_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class StageName(StrEnum):
    generate = "generate"
    filter = "filter"
    dpo = "dpo"
    merge = "merge"
    zip = "zip"
    eval = "eval"
    all = "all"


class PairStrategy(StrEnum):
    best_vs_worst = "best_vs_worst"
    """Per prompt: the highest-scoring passing sample vs the lowest-scoring failing one."""
    all_pass_fail = "all_pass_fail"
    """Every passing x failing combination, capped by `max_pairs_per_prompt`."""


class Precision(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class StageConfig:
    name: StageName = MISSING
    """Which stage to run; `all` runs every stage for every domain in `domains`."""


@dataclass
class ModelConfig:
    name: str = MISSING
    """A label for reports."""
    path: str = "embedded"
    """A local Hugging Face model directory, or `embedded` for the SmolLM2-135M-Instruct GGUF."""
    generation_dtype: Precision = Precision.bfloat16
    """dtype of the sampling copy; bf16 is ~1.8x faster on AVX512-BF16 CPUs and on GPUs."""


@dataclass
class PromptSourceConfig:
    name: str = MISSING
    """A registered prompt source (skillweave.prompts.PROMPT_SOURCES)."""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    num_prompts: int = 32
    samples_per_prompt: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    """Nucleus sampling; < 1 sorts the whole vocabulary every step (3x slower generation on CPU)."""
    max_new_tokens: int = 256
    batch_size: int = 16
    """Prompts per generate() call; each yields `samples_per_prompt` sequences."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("domain.sampling.samples_per_prompt must be >= 2 to form chosen/rejected pairs")
        if not 0.0 < self.temperature:
            raise ValueError("domain.sampling.temperature must be > 0: the paper samples several answers")


@dataclass
class DomainConfig:
    name: str = MISSING
    prompt_source: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rules: str = MISSING
    """A rule set: a name in rules/ (`math` -> rules/math.yaml) or a path to a YAML file."""
    eval_task: str = MISSING
    """The lm-eval task (skillweave/tasks/) that measures this domain."""
    contamination_ngram: Optional[int] = 13
    """Drop training prompts sharing a word n-gram of this size with any eval set (null: keep all)."""


@dataclass
class FilterConfig:
    strategy: PairStrategy = PairStrategy.best_vs_worst
    max_pairs_per_prompt: int = 1
    min_margin: float = 0.0
    """Minimum score difference between chosen and rejected."""
    min_pairs: int = 1
    """Fewer pairs than this stops the run: DPO on nothing is not an experiment."""


@dataclass
class DPOConfig:
    learning_rate: float = 5e-6
    beta: float = 0.1
    max_steps: int = 20
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 2
    max_length: int = 384
    warmup_ratio: float = 0.1
    """Linear warm-up over this fraction of the steps (< 1)."""
    gradient_checkpointing: bool = True
    precision: Precision = Precision.float32
    """Training dtype; bf16 needs a GPU (mixed precision), float32 is the CPU path."""
    save_steps: int = 50
    """Checkpoint interval: a killed run resumes from the last checkpoint."""
    seed: int = 0
    deepspeed: Optional[str] = None
    """A DeepSpeed config: `zero2` or `zero3` (conf/deepspeed/<name>.json) or a path to a JSON file;
    null trains without DeepSpeed. Launch with `accelerate launch` for more than one process."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"dpo.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class MergeConfig:
    method: str = MISSING
    """A mergekit method: task_arithmetic, ties, dare_ties, dare_linear."""
    weight: float = 1.0
    """Per-domain weight of each task vector."""
    density: float = 0.5
    """Fraction of entries kept (ties, dare_*)."""
    normalize: bool = True
    lambda_: float = 1.0
    """Scale of the merged task vector (mergekit's `lambda`)."""
    seed: int = 0
    """Seed of DARE's random drop."""


@dataclass
class ZipConfig:
    """SkillZip (METHOD.md stage 2); conf/zip/ holds the paper's setting and its ablations."""

    rank: int = 16
    """SVD rank of each linear layer's residual; the cap when `energy` is set."""
    bits: int = 8
    """Integer width of the factors: 8 (W8A8) or 4 (W4A8, packed two per byte)."""
    smoothing: str = "smoothquant"
    """Channel-wise smoothing before the SVD: none | smoothquant (a^alpha / w^(1-alpha)) | power
    (a^alpha, the aggressive one), a = mean |x| per input channel over the calibration prompts."""
    alpha: float = 0.5
    """Smoothing strength in [0, 1]."""
    rotation: str = "hadamard"
    """Rank-wise rotation folded into the factors: none | hadamard | random."""
    energy: Optional[float] = None
    """If set, each layer's rank is the least that keeps this share of its squared norm (<= rank)."""
    calibration_prompts: int = 8
    """Prompts (with their sampled answers) from the domain's generate artifact that calibrate the
    smoothing; unused when smoothing=none."""
    fidelity_prompts: int = 4
    """Other prompts of that artifact on which the next-token KL of skillpack vs uncompressed
    residual is measured; 0 skips it."""
    seed: int = 0
    """Seeds rotation=random."""

    def __post_init__(self) -> None:
        # The choices mirror skillweave.zip.smoothing's registries (a test checks they agree).
        if self.rank < 1:
            raise ValueError(f"zip.rank must be >= 1, got {self.rank}")
        if self.bits not in (8, 4):
            raise ValueError(f"zip.bits must be 8 or 4, got {self.bits}")
        if self.smoothing not in ("none", "smoothquant", "power"):
            raise ValueError(f"zip.smoothing must be none, smoothquant or power, got {self.smoothing!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"zip.alpha must be in [0, 1], got {self.alpha}")
        if self.rotation not in ("none", "hadamard", "random"):
            raise ValueError(f"zip.rotation must be none, hadamard or random, got {self.rotation!r}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"zip.energy must be in (0, 1] or null, got {self.energy}")
        if self.smoothing != "none" and self.calibration_prompts < 1:
            raise ValueError(f"zip.smoothing={self.smoothing} needs zip.calibration_prompts >= 1")
        if self.fidelity_prompts < 0:
            raise ValueError(f"zip.fidelity_prompts must be >= 0, got {self.fidelity_prompts}")


@dataclass
class EvalConfig:
    limit: Optional[int] = 20
    """Documents per task (None: all)."""
    max_gen_toks: int = 256
    batch_size: int = 8
    configurations: list[str] = field(default_factory=lambda: ["base", "dpo", "merged", "skillweave"])
    """Which configurations to compare (see skillweave/stages/eval.py CONFIGURATIONS)."""
    integer_path: bool = True
    """Run skillpacks as integer GEMMs (quantized activations, as deployed); false: dequantized fp factors."""
    external_model: Optional[str] = None
    """An HF model directory evaluated as configuration `external` (e.g. the 32B monolith on a cluster)."""
    budget_bytes: Optional[int] = None
    """Memory budget in bytes (backbone + everything a configuration holds): configurations over it are
    still evaluated, then marked within_budget=false and listed as excluded in results (None: no budget)."""


@dataclass
class WandbConfig:
    mode: str = "offline"
    """disabled | offline | online (online needs `wandb login`); WANDB_MODE in the environment wins."""
    project: str = "skillweave"
    group: Optional[str] = None
    """Runs of one group compare side by side; default: the Hydra sweep under -m, else none."""


@dataclass
class SkillweaveConfig:
    stage: StageConfig = field(default_factory=StageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    domains: list[str] = field(default_factory=lambda: ["math", "code", "instructions"])
    """Domains covered by stage=all and by the fan-in stages (merge, eval)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    zip: ZipConfig = field(default_factory=ZipConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    artifacts_root: str = "artifacts"
    """Root of the content-addressed artifact store (a shared filesystem on a cluster)."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""


def register_configs() -> None:
    cs = ConfigStore.instance()
    # The group YAMLs merge onto this schema, so every key and type is checked at compose time.
    ConfigStore.instance().store(name="skillweave_schema", node=SkillweaveConfig)


def to_config(cfg: DictConfig) -> SkillweaveConfig:
    """The typed config a stage sees; runs every `__post_init__` check."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, SkillweaveConfig)
    return obj
