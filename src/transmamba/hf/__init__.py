"""Hugging Face-native students: `TransMambaConfig`, `TransMambaForCausalLM`, `TransMambaCache`.

Importing this package registers `model_type = "transmamba"` with transformers' `AutoConfig` and
`AutoModelForCausalLM` (`import transmamba` does it whenever transformers is installed), so

    AutoModelForCausalLM.from_pretrained(dir)

loads a directory written by `save_pretrained` (`transmamba convert` / `transmamba train` write it).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from transmamba.hf.cache import TransMambaCache
from transmamba.hf.configuration_transmamba import TransMambaConfig
from transmamba.hf.modeling_transmamba import TransMambaForCausalLM

AutoConfig.register(TransMambaConfig.model_type, TransMambaConfig, exist_ok=True)
AutoModelForCausalLM.register(TransMambaConfig, TransMambaForCausalLM, exist_ok=True)

__all__ = ["TransMambaCache", "TransMambaConfig", "TransMambaForCausalLM"]
