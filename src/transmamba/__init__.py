"""transmamba: turn Transformers into fast Mamba-family models.

Our Hugging Face model type ("transmamba": `transmamba.hf`) is registered with transformers'
AutoConfig / AutoModelForCausalLM, so that `AutoModelForCausalLM.from_pretrained(dir)` loads our
students after `import transmamba`. The registration is lazy: `import transmamba` imports neither
torch nor transformers (it takes milliseconds); the classes are registered the moment transformers
is imported, or at once if it already is. Without transformers the package imports as before.
(`TRANSMAMBA_NO_HF_REGISTER=1` skips the registration.)
"""

import importlib
import importlib.abc
import importlib.machinery
import os
import sys

__version__ = "0.1.0"


def _register_hf() -> None:
    importlib.import_module("transmamba.hf")  # registers on import (kept dynamic: hf/ sits above models/)


class _RegisterWithTransformers(importlib.abc.MetaPathFinder):
    """Finds `transformers` as usual and registers our classes once its top module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if self in sys.meta_path:  # a spec that is only looked at (importlib.util.find_spec) leaves it in place
                sys.meta_path.remove(self)
            _register_hf()

        spec.loader.exec_module = exec_module  # this spec's loader instance only
        return spec


if os.environ.get("TRANSMAMBA_NO_HF_REGISTER") != "1":
    if "transformers" in sys.modules:
        _register_hf()
    elif importlib.machinery.PathFinder.find_spec("transformers") is not None:
        sys.meta_path.insert(0, _RegisterWithTransformers())
