import subprocess
import sys

import transmamba


def test_import():
    assert transmamba.__version__


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


REGISTERED = ("from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
              "from transformers import AutoModelForCausalLM; "
              "from transmamba.hf import TransMambaConfig, TransMambaForCausalLM; "
              "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING as M; "
              "print(CONFIG_MAPPING['transmamba'] is TransMambaConfig, M[TransMambaConfig] is TransMambaForCausalLM)")


def test_import_is_light_and_cli_help_imports_no_torch():
    """`import transmamba` (and so `transmamba --help`) imports neither torch nor transformers."""
    assert _run("import sys, transmamba; print('torch' in sys.modules, 'transformers' in sys.modules)") == "False False"
    code = ("import sys, contextlib, io\nfrom transmamba.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): rc = main(['--help'])\n"
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    assert _run(code) == "0 False False"


def test_hf_classes_register_when_transformers_is_imported_later():
    assert _run(f"import transmamba; {REGISTERED}") == "True True"


def test_hf_classes_register_when_transformers_came_first():
    assert _run(f"import transformers, transmamba; {REGISTERED}") == "True True"


def test_a_find_spec_that_does_not_load_keeps_the_registration_pending():
    """accelerate, lm-eval and others probe with importlib.util.find_spec before importing."""
    assert _run(f"import importlib.util, transmamba; importlib.util.find_spec('transformers'); {REGISTERED}") == "True True"


def test_no_register_switch():
    code = ("import os; os.environ['TRANSMAMBA_NO_HF_REGISTER'] = '1'; import transmamba, transformers; "
            "from transformers.models.auto.configuration_auto import CONFIG_MAPPING; print('transmamba' in CONFIG_MAPPING)")
    assert _run(code) == "False"
