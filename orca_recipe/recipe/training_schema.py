"""The `training` section of the recipe schema: the student, Axolotl's options for SFT and for
preference training (range-checked here, Axolotl's full schema on `validate --check-axolotl`),
how Axolotl is launched, and how training is sharded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from orca_recipe.recipe.strict import Strict


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
