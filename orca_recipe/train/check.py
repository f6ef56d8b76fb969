"""Check rendered Axolotl configs against Axolotl's own schema, in Axolotl's environment.

Axolotl is not importable from the toolkit's environment (and is slow to import), so the
check runs one subprocess with the venv's Python that validates every config at once.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any

from orca_recipe.errors import UserError
from orca_recipe.train.launch import axolotl_bin, train_env

if TYPE_CHECKING:  # the recipe package imports this one, not the other way round
    from orca_recipe.recipe.schema import Launcher

_SNIPPET = r"""
import json, sys, logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault
payload = json.load(sys.stdin)
caps, env_caps = payload["capabilities"], payload["env_capabilities"]
results = {}
for name, cfg in payload["configs"].items():
    try:
        validate_config(DictDefault(cfg), capabilities=caps, env_capabilities=env_caps)
        results[name] = None
    except Exception as e:  # pydantic ValidationError or ValueError: Axolotl's own message
        results[name] = f"{type(e).__name__}: {e}"
print("@@RESULTS@@" + json.dumps(results))
"""


def axolotl_available(launcher: Launcher) -> bool:
    try:
        axolotl_bin(launcher)
        return True
    except UserError:
        return False


def gpu_node(num_processes: int, num_nodes: int = 1) -> dict[str, Any]:
    """Axolotl's GPUCapabilities of the node a GPU recipe targets (an 80 GB Hopper: bf16, tf32),
    so its validator applies the checks it applies on that node, from a CPU machine."""
    return {"bf16": True, "tf32": True, "fp8": False, "n_gpu": num_processes, "n_node": num_nodes, "compute_capability": "sm_90"}


def check_configs(configs: dict[str, dict[str, Any]], launcher: Launcher, timeout: float = 300,
                  capabilities: dict[str, Any] | None = None) -> dict[str, str | None]:
    """stage name -> None when Axolotl accepts the config, else its error message. With
    `capabilities` (see `gpu_node`) Axolotl validates for that GPU node, torch 2.13.0."""
    python = axolotl_bin(launcher).parent / "python"
    payload = {"configs": configs, "capabilities": capabilities, "env_capabilities": {"torch_version": "2.13.0"} if capabilities else None}
    proc = subprocess.run(
        [str(python), "-c", _SNIPPET], input=json.dumps(payload, default=str), capture_output=True, text=True,
        timeout=timeout, env=train_env(launcher),
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULTS@@"):
            return json.loads(line[len("@@RESULTS@@"):])
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-10:])
    raise UserError(f"could not run Axolotl's config check ({python}):\n{tail}")
