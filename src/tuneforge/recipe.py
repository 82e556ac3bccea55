"""The recipe: one YAML file that says what to train, on what, how, and where results go.

Every section is a pydantic model with ``extra="forbid"`` so a misspelt key fails before any work,
and every field carries its default and a description (``tuneforge validate`` and the docs print
them). Cross-field rules live in ``model_validator(mode="after")`` so they see defaults too.

This module imports only pydantic and yaml: the CLI uses it to validate a recipe in well under a
second, without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tuneforge.config_io import load_config
from tuneforge.data.augment import AugmentConfig
from tuneforge.data.clean import CleanConfig
from tuneforge.data.dedup import DecontaminateConfig, DedupConfig
from tuneforge.data.formatting import ChatFormatConfig
from tuneforge.data.qa import QAConfig
from tuneforge.data.sources import SourceConfig, SourceFormat, is_glob
from tuneforge.data.split import SplitConfig
from tuneforge.models.methods import (METHOD_SECTIONS, AdapterConfig, IA3Config, LoraConfig, MethodName,
                                      PrefixTuningConfig, PromptTuningConfig)
from tuneforge.models.quantize import QuantizeConfig, recipe_problem as quantize_problem
from tuneforge.models.scratch import ArchitectureConfig
from tuneforge.models.tokenizer_train import TokenizerTrainConfig
from tuneforge.sections import Section
from tuneforge.tasks.causal_lm import CausalLMConfig
from tuneforge.tasks.grpo import GRPOConfig
from tuneforge.tasks.masked_lm import MaskedLMConfig
from tuneforge.tasks.preference import PreferenceConfig
from tuneforge.tasks.seq2seq import Seq2SeqConfig



def task_sections() -> set[str]:
    """Recipe sections holding one task's own settings (``causal_lm:``), from the task registry."""
    from tuneforge.tasks import all_specs

    return {spec.section for spec in all_specs() if spec.section}


class ModelSection(Section):
    name: str = Field(
        "minilm-l6",
        description="Built-in alias (minilm-l6, smollm2-135m), a local directory with config.json and "
        "safetensors weights, or a Hugging Face Hub id (only when the Hub is reachable).",
    )
    allow_pickle: bool = Field(
        False,
        description="Allow loading pickle weights (pytorch_model.bin). Pickle can run arbitrary code: "
        "only enable for files you trust.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with a Hub model. Off unless you trust the repository."
    )
    max_length: int = Field(128, ge=8, le=8192, description="Truncate inputs to this many tokens.")
    architecture: ArchitectureConfig | None = Field(
        None, description="Train from scratch: a randomly initialised transformer of this family and size "
        "(then model.name is not used, and model.tokenizer is required)."
    )
    tokenizer: str | TokenizerTrainConfig | None = Field(
        None, description="With architecture: the tokenizer, a directory from `tuneforge tokenizer train`, a model "
        "name/alias whose tokenizer to reuse, or the settings of `tuneforge tokenizer train` (e.g. {type: char}): "
        "then the run trains it on its training split (never on validation text) into <run>/tokenizer."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "auto", description="Attention kernel for training (transformers' attn_implementation). auto: on CUDA "
        "flash_attention_2 when the flash-attn package is installed, precision is bf16/fp16 and the model supports "
        "it, else sdpa; on CPU eager for hidden size <= 1024 (faster there for small models), else sdpa. "
        "flash_attention_2 and flex_attention need a CUDA GPU. The final fp32 evaluation and the export use the "
        "model's default (sdpa where supported). See docs/memory.md."
    )
    quantize: QuantizeConfig | None = Field(
        None, description="Load the frozen base quantised to 4 or 8 bits (QLoRA) and train method lora or dora on "
        "top; the export merges the adapter into the dequantised weights, in fp32. null: full precision. See "
        "docs/memory.md (Quantised bases)."
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelSection":
        if self.architecture is None:
            if self.tokenizer is not None:
                raise ValueError("model.tokenizer only applies with model.architecture (training from scratch); "
                                 "a pretrained model uses its own tokenizer")
            return self
        if "name" in self.model_fields_set:
            raise ValueError("model.name and model.architecture exclude each other: name loads pretrained weights, "
                             "architecture builds a random model")
        if self.tokenizer is None:
            raise ValueError("model.architecture needs model.tokenizer (a directory from `tuneforge tokenizer "
                             "train`, or a model whose tokenizer to reuse)")
        return self


class DataSection(Section):
    """Where the data comes from and how it is prepared (see docs/data.md for every stage)."""

    train_file: Path | None = Field(
        None,
        description="Training data (any format of data.sources; format from the suffix or data.format). "
        "Use data.sources instead to mix several sources with weights.",
    )
    validation_file: Path | SourceConfig | None = Field(
        None,
        description="Validation data: a path read like train_file, or a source of its own written like an entry "
        "of data.sources (e.g. {path: val.en, target_path: val.de}). When absent, "
        "data.split.validation_fraction of the training rows is held out.",
    )
    test_file: Path | SourceConfig | None = Field(
        None, description="Test data, given like validation_file. When absent, data.split.test_fraction is "
        "held out."
    )
    format: SourceFormat = Field("auto", description="Format of train/validation/test_file; auto: from the suffix.")
    text_column: str = Field("text", description="Column holding the input text.")
    label_column: str | None = Field("label", description="Column holding the label (name or integer index).")
    target_column: str | None = Field(
        None, description="Column holding the target text of source/target pairs (see data.sources[].target_column)."
    )
    tags_column: str | None = Field(
        None, description="Column holding NER word tags; text_column then holds the words (see "
        "data.sources[].tags_column)."
    )
    group_column: str | None = Field(
        None, description="Column whose value keeps rows together in one split (e.g. a document or user id)."
    )
    label_names: list[str] | None = Field(
        None,
        description="Class names in index order, e.g. [negative, positive]. Labels in the data may be these "
        "names or their 0-based integer indices (0 = the first name; see label_offset). Default: inferred from "
        "the training rows.",
    )
    label_offset: int = Field(
        0, ge=0, description="Subtracted from integer class labels before they index label_names: 1 for a 1-based "
        "class column (1..4 for 4 names, AG News). Integer labels that never include 0 and go up to the number "
        "of names are refused while this is 0."
    )
    has_header: bool = Field(
        True, description="CSV/TSV train/validation/test_file: the first line names the columns. false: every line "
        "is data; the columns are column_names, or \"0\", \"1\", ... by position (text_column: \"0\"). Each "
        "data.sources entry has its own has_header."
    )
    column_names: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=1, description="With has_header: false: a name per column of the CSV/TSV, in order, e.g. "
        "[sentence, label]; text_column and label_column then name two of them."
    )
    label_separator: str = Field(
        ",", min_length=1, description="Multi-label classification: the separator of several labels written in "
        "one string (a JSON list of labels needs none)."
    )
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="Training sources, mixed (each with its own format, columns and weight); instead of train_file.",
    )
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Cleaning rules.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Exact and near-duplicate removal.")
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig, description="Remove training rows that copy validation/test rows."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Held-out splits.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training-split augmentation.")
    formatting: ChatFormatConfig = Field(
        default_factory=ChatFormatConfig, description="Chat template, loss masking and packing for chat data."
    )
    max_rejected_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this share of rows in any source is unreadable or invalid "
        "(rejected rows always go to rejected.jsonl with their line and reason).",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Use only the first N training rows (after the split); for quick runs."
    )

    @model_validator(mode="after")
    def _check(self) -> "DataSection":
        if (self.train_file is None) == (not self.sources):
            raise ValueError("data: set exactly one of train_file (one file) or sources (a list); "
                             + ("got both" if self.sources else "got neither"))
        if self.label_names is not None:
            if len(self.label_names) < 2:
                raise ValueError("data.label_names needs at least 2 classes")
            if len(set(self.label_names)) != len(self.label_names):
                raise ValueError(f"data.label_names has duplicates: {self.label_names}")
        elif self.label_offset:
            raise ValueError("data.label_offset needs data.label_names: it shifts integer labels that index those "
                             "names (label_offset: 1 reads 1 as the first name)")
        if self.column_names is not None:
            if self.has_header:
                raise ValueError("data.column_names names the columns of a file without a header row: set "
                                 "data.has_header: false as well (a file with a header row takes its column names "
                                 "from it)")
            dupes = sorted({n for n in self.column_names if self.column_names.count(n) > 1})
            if dupes:
                raise ValueError(f"data.column_names has duplicates: {', '.join(dupes)}")
        # compared with the defaults, not "was it set": a resolved recipe (every default written out) validates again
        header_keys = [k for k, on in (("has_header", not self.has_header), ("column_names", self.column_names is not None))
                       if on]
        if header_keys and self.train_file is None and not any(
                isinstance(f, Path) for f in (self.validation_file, self.test_file)):
            raise ValueError(f"data.{header_keys[0]} applies to train_file, validation_file and test_file given as "
                             "paths; with data.sources set it in each entry instead")
        for given, fraction in (("validation_file", "validation_fraction"), ("test_file", "test_fraction")):
            if getattr(self, given) is not None and fraction in self.split.model_fields_set:
                raise ValueError(f"data.split.{fraction} is only used without data.{given}; remove one")
        if self.validation_file is None and self.split.validation_fraction == 0:
            raise ValueError("data: no validation data: set data.validation_file or data.split.validation_fraction > 0")
        return self

    def missing_files(self) -> list[tuple[str, Path]]:
        """(key, path) of every data file the recipe names that does not exist (glob patterns excepted)."""
        given: list[tuple[str, Path | SourceConfig | None]] = [
            ("data.train_file", self.train_file), ("data.validation_file", self.validation_file),
            ("data.test_file", self.test_file)]
        given += [(f"data.sources.{i}", source) for i, source in enumerate(self.sources)]
        missing = []
        for key, value in given:
            if isinstance(value, SourceConfig):
                paths = [(f"{key}.path", value.path), (f"{key}.target_path", value.target_path)]
            else:
                paths = [(key, value)]
            missing += [(k, Path(p)) for k, p in paths
                        if p is not None and not Path(p).exists() and not is_glob(Path(p))]
        return missing

    def _file_source(self, path: Path, columns: tuple[str, ...]) -> SourceConfig:
        # Only the column options the user set: a source rejects options its format ignores.
        shared = {k: getattr(self, k) for k in columns if k in self.model_fields_set}
        return SourceConfig(path=path, format=self.format, **shared)

    def training_sources(self) -> list[SourceConfig]:
        if self.sources:
            return list(self.sources)
        return [self._file_source(self.train_file, _COLUMNS + ("group_column",))]

    def evaluation_sources(self) -> dict[str, SourceConfig]:
        # No group column: groups only decide the split of the training rows.
        return {split: given if isinstance(given, SourceConfig) else self._file_source(given, _COLUMNS)
                for split, given in (("validation", self.validation_file), ("test", self.test_file))
                if given is not None}


_COLUMNS = ("text_column", "label_column", "target_column", "tags_column", "has_header", "column_names")


class FirstNLayers(Section):
    first_n_layers: int = Field(..., ge=1, description="Freeze the embeddings and the first N transformer layers.")


FreezePolicy = Union[Literal["none", "embeddings", "all_but_head"], FirstNLayers]


class ClassificationConfig(Section):
    multi_label: bool = Field(False, description="Several labels per text (sigmoid per label, binary "
                              "cross-entropy); per-label thresholds are tuned on the validation set.")


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps; overrides epochs for the schedule."
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="Global examples per micro-batch, summed over all processes (the same recipe gives the "
        "same batch under accelerate launch).",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    eval_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Examples per evaluation batch. auto: sized from the free memory (RAM, or the GPU's) "
        "and the model's size at the longest validation example, at most 64. Any size: a batch that runs out "
        "of memory is retried in halves."
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    optimizer: Literal["adamw", "sgd", "adafactor", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw", description="Optimizer. adamw_8bit: AdamW with 8-bit optimizer state (bitsandbytes), a quarter of "
        "adamw's state memory; paged_adamw_8bit: the same, state paged between GPU and CPU memory (CUDA only)."
    )
    weight_decay: float = Field(0.01, ge=0, description="Decoupled weight decay (not applied to biases/norms).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warmup."
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Where linear/cosine decay ends, as a share of "
                                                              "learning_rate (nanoGPT: 0.1).")
    max_minutes: float | None = Field(
        None, gt=0, description="Time budget: stop training after this many minutes of the loop (evaluations "
        "included), then evaluate and export as after the last step. The schedule still spans max_steps/epochs: "
        "size them to the budget so the learning rate has decayed when time is up."
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Share of steps spent warming up linearly.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps; when set, warmup_ratio is ignored.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this global norm; null: off.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast dtype. auto: bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, else fp32.",
    )
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (shuffled) to cut padding."
    )
    eval_rows_during_training: int | None = Field(
        None, ge=1, description="Evaluations during training use only the first N validation rows (like nanoGPT's "
        "eval_iters: cheap, frequent checks on a big validation set); the final evaluation uses all. null: all."
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="Evaluate every N optimizer steps; default: at the end of every epoch."
    )
    metric_for_best: str | None = Field(
        None, description="Validation metric that picks the best checkpoint; null: the task's default "
        "(classification accuracy, regression mse, token_classification entity_f1)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement of metric_for_best; null: off."
    )
    log_every_steps: int = Field(10, ge=1, description="Write a metrics.jsonl training record every N steps.")
    halt_after_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after N steps as if interrupted, leaving a checkpoint for --resume "
        "(time-boxed or preemptible jobs, and the resume test).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Activation checkpointing: keep only each transformer block's input and recompute the "
        "block in the backward pass (non-reentrant). Activation memory falls from all layers' to about one "
        "layer's, for roughly a third more compute per step. Not with method prefix. See docs/memory.md."
    )
    activation_offload: bool = Field(
        False, description="Move the activations saved for the backward pass to pinned CPU memory during the "
        "forward and back for the backward (torch save_on_cpu): frees GPU memory at the cost of host<->device "
        "copies every step. Needs a CUDA GPU. See docs/memory.md."
    )
    neftune_alpha: float | None = Field(
        None, gt=0, description="NEFTune: add uniform noise of scale alpha/sqrt(sequence length x hidden size) to "
        "the input embeddings in training steps only (evaluation and the export are unaffected); 5 is the paper's "
        "usual value for instruction tuning. null: off. See docs/methods.md."
    )



class ExportSection(Section):
    enabled: bool = Field(True, description="Write a merged, standalone model to <run>/export after training.")
    verify: bool = Field(
        True, description="Reload the export with plain transformers and check it predicts like the trained model."
    )


class Recipe(Section):
    """A complete fine-tuning recipe (``tuneforge run``)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: runs/<name>/.")
    seed: int = Field(42, description="Seed for the split, initialisation, data order and dropout.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run directories.")
    task: str = Field(
        "classification", description="Task head. classification: single-label sequence classification; "
        "regression: one real value per text (MSE); token_classification: a tag per word (NER, IOB2); "
        "causal_lm: instruction/chat tuning of a decoder (loss on the replies), or causal-LM pretraining on "
        "text; extractive_qa: the answer span in a context (SQuAD; data.format squad); "
        "seq2seq: translation or summarisation with an encoder-decoder (data.sources format parallel); "
        "masked_lm: BERT-style masked-LM pretraining or domain adaptation on text. Any task registered with "
        "tuneforge.tasks.register is accepted too."
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    method: MethodName = Field(
        "lora", description="full: all (unfrozen) weights; head_only: a linear probe; through peft: lora, dora, "
        "ia3, prefix, prompt; adapter: bottleneck adapters (Houlsby/Pfeiffer). See docs/methods.md."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Settings of method lora and dora.")
    ia3: IA3Config = Field(default_factory=IA3Config, description="Settings of method ia3.")
    prefix: PrefixTuningConfig = Field(default_factory=PrefixTuningConfig, description="Settings of method prefix.")
    prompt: PromptTuningConfig = Field(default_factory=PromptTuningConfig, description="Settings of method prompt.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Settings of method adapter.")
    freeze: Annotated[FreezePolicy, Field(union_mode="left_to_right")] = Field(
        "none",
        description="Frozen weights for method full: none, embeddings, all_but_head, or {first_n_layers: N}.",
    )
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig,
                                                 description="Settings of task classification.")
    causal_lm: CausalLMConfig = Field(default_factory=CausalLMConfig,
                                      description="Settings of task causal_lm (generation-based evaluation).")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig,
                             description="Settings of task grpo (rewards, group size, sampling, KL penalty).")
    extractive_qa: QAConfig = Field(default_factory=QAConfig,
                                    description="Settings of task extractive_qa (context windows, answer picking).")
    seq2seq: Seq2SeqConfig = Field(default_factory=Seq2SeqConfig,
                                   description="Settings of task seq2seq (source prefix, target length, generation).")
    masked_lm: MaskedLMConfig = Field(default_factory=MaskedLMConfig,
                                      description="Settings of task masked_lm (masking rates).")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig,
                                         description="Settings of task preference (DPO family, KTO; docs/alignment.md).")
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportSection = Field(default_factory=ExportSection)

    @field_validator("task")
    @classmethod
    def _registered_task(cls, value: str) -> str:
        from tuneforge.tasks import task_names

        names = task_names()
        if value not in names:
            # worded like pydantic's own Literal error, which this field was before tasks had a registry
            expected = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        from tuneforge.tasks import all_specs, spec_for

        spec = spec_for(self)
        arch = self.model.architecture
        if arch is not None:
            if arch.family not in spec.scratch_families:
                can = [s.name for s in all_specs() if arch.family in s.scratch_families]
                raise ValueError(f"model.architecture.family {arch.family} cannot do task {self.task}; it does: "
                                 f"{', '.join(can)}")
            if self.method != "full":
                raise ValueError(f"method {self.method} trains a few weights on top of pretrained ones, but "
                                 "model.architecture starts from random weights: use method: full")
        if self.train.metric_for_best is None:
            # the task's default, written into the resolved recipe so a run says what it selected on
            self.train.metric_for_best = spec.best_metric
        elif self.train.metric_for_best not in spec.selectable:
            raise ValueError(
                f"train.metric_for_best: unknown metric {self.train.metric_for_best!r} for task {self.task}; "
                f"allowed: {', '.join(spec.selectable)}"
            )
        if spec.check_recipe is not None:
            spec.check_recipe(self)
        for section in sorted(task_sections() & self.model_fields_set - {spec.section}):
            raise ValueError(f"{section}: settings given but task is '{self.task}'; set task: {section} or "
                             f"remove the {section} section")
        used = METHOD_SECTIONS.get(self.method, (None,))[0]
        for section in sorted({key for key, _ in METHOD_SECTIONS.values()} & self.model_fields_set - {used}):
            users = [m for m, (key, _) in METHOD_SECTIONS.items() if key == section]
            raise ValueError(f"{section}: settings given but method is '{self.method}'; set method: "
                             f"{' or '.join(users)} or remove the {section} section")
        if self.method != "full" and self.freeze != "none":
            raise ValueError(
                f"freeze: must be 'none' with method '{self.method}' (it already decides what trains); "
                f"got {self._freeze_text()}"
            )
        return self

    @model_validator(mode="after")
    def _check_quantize(self) -> "Recipe":
        problem = quantize_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def _freeze_text(self) -> str:
        return self.freeze if isinstance(self.freeze, str) else f"first_n_layers: {self.freeze.first_n_layers}"

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key.path=value`` overrides, validate. Raises RecipeError."""
    return load_config(Recipe, path, overrides)


def resolved_dict(recipe: Recipe) -> dict:
    """The recipe with every default filled in, minus sections that do not apply (method sections other
    than the recipe's method, a split fraction next to the file it would replace), so the result validates again."""
    data = recipe.model_dump(mode="json")
    from tuneforge.tasks import spec_for

    for section in task_sections() - {spec_for(recipe).section}:
        data.pop(section)
    used = METHOD_SECTIONS.get(recipe.method, (None,))[0]
    for section in {key for key, _ in METHOD_SECTIONS.values()} - {used}:
        data.pop(section)
    for given, fraction in (("validation_file", "validation_fraction"), ("test_file", "test_fraction")):
        if getattr(recipe.data, given) is not None:
            data["data"]["split"].pop(fraction)
    return data


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (defaults included), as written to runs/<name>/recipe.yaml."""
    import yaml

    return yaml.safe_dump(resolved_dict(recipe), sort_keys=False)


def describe_fields(model: type[BaseModel] = Recipe, prefix: str = "", _seen: tuple = ()) -> list[tuple[str, str, str]]:
    """(key path, default, description) for every field, recursively; used by the docs and `validate --explain`.

    A section is described key by key (``train.learning_rate``); a field that may also be a section (a union
    such as ``freeze`` or ``data.validation_file``) is listed itself, then the section's keys
    (``freeze.first_n_layers``); a list of sections is listed, then its items' keys as ``data.sources[].path``,
    and a mapping of sections as ``key.<name>.field``."""
    import typing

    def sections(annotation: Any, path: str) -> list[tuple[str, type[BaseModel]]]:
        """(key path, section) of every section ``annotation`` holds: itself, a union member, list items."""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [(path, annotation)]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            return sections(args[0], path)
        if origin in (list, tuple, set, frozenset):
            return [found for arg in args if arg is not Ellipsis for found in sections(arg, path + "[]")]
        if origin is dict and len(args) == 2:
            return sections(args[1], path + ".<name>")
        return [found for arg in args for found in sections(arg, path)]  # unions (and Optional)

    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann not in _seen:
                rows.extend(describe_fields(ann, key + ".", _seen + (model,)))
            continue
        default: Any = "required" if field.is_required() else field.get_default(call_default_factory=True)
        rows.append((key, str(default), field.description or ""))
        for path, section in sections(ann, key):
            if section not in _seen + (model,):
                rows.extend(describe_fields(section, path + ".", _seen + (model,)))
    return list({row[0]: row for row in rows}.values())  # a key two union members share: listed once
