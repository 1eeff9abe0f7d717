"""transmamba: turn Transformers into fast Mamba-family models.

Importing the package registers our Hugging Face model type ("transmamba": `transmamba.hf`) with
transformers' AutoConfig / AutoModelForCausalLM when transformers is installed, so that
`AutoModelForCausalLM.from_pretrained(dir)` loads our students; without transformers the package
imports as before. (`TRANSMAMBA_NO_HF_REGISTER=1` skips the registration.)
"""

import importlib
import importlib.util
import os

__version__ = "0.1.0"


def _register_hf() -> None:
    if os.environ.get("TRANSMAMBA_NO_HF_REGISTER") == "1" or importlib.util.find_spec("transformers") is None:
        return
    importlib.import_module("transmamba.hf")  # registers on import (kept dynamic: hf/ sits above models/)


_register_hf()
