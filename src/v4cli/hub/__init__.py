"""Models on disk and on the Hugging Face Hub, one module per noun:

- names.py: what a name means (tiny, flash, pro, owner/name, a folder);
- catalog.py: the models on this machine (resolve one, list them, remove one);
- download.py: `pull` (plan, disk check, transfer, check), with transfer.py moving the bytes resumably;
- verification.py: whether a checkpoint folder is usable;
- display.py: `show` (config, size, memory plan; flash and pro before they are pulled too).

Importing this package imports huggingface_hub: the CLI does so inside its verbs only.
"""

from .catalog import ModelInfo, ResolvedModel, list_models, remove, resolve
from .display import known_config, memory_plan, plan_for_pull, show
from .download import DEFAULT_INCLUDE, ESSENTIAL, pull
from .env import cache_dir, endpoint, offline
from .errors import HubError, ModelNotFound, NotEnoughDisk, PullError
from .names import ALIASES, BUILTIN, repo_id_of
from .verification import verify

__all__ = ["ALIASES", "BUILTIN", "DEFAULT_INCLUDE", "ESSENTIAL", "HubError", "ModelInfo", "ModelNotFound",
           "NotEnoughDisk", "PullError", "ResolvedModel", "cache_dir", "endpoint", "known_config", "list_models",
           "memory_plan", "offline", "plan_for_pull", "pull", "remove", "repo_id_of", "resolve", "show",
           "verify"]
