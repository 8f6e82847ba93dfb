"""Model families: which family a served name belongs to, and what the family does about thinking.

The catalog reads a model's family from its config (``models: {NAME: {family: ...}}``) or, failing
that, from its name; the family says how its reasoning is switched (``policy/reasoning.py``).
"""

from __future__ import annotations

from gateway.config import Reasoning

# What each family does about thinking (see FACTS.md): hybrid = thinks unless switched off
# (Qwen3: chat_template_kwargs.enable_thinking=false); opt_in = off unless switched on
# (Granite, DeepSeek-V3.1); effort = only reasoning_effort, cannot be switched off (gpt-oss);
# always = always thinks (DeepSeek-R1 and distills, QwQ).
FAMILY_REASONING: dict[str, Reasoning] = {
    "qwen3": "hybrid",
    "granite": "opt_in",
    "deepseek_v3": "opt_in",
    "gpt_oss": "effort",
    "deepseek_r1": "always",
    "qwq": "always",
}


def guess_family(model_name: str) -> str | None:
    n = model_name.lower()
    for needle, family in (
        ("qwq", "qwq"),
        ("deepseek-r1", "deepseek_r1"),
        ("r1-distill", "deepseek_r1"),
        ("deepseek-v3", "deepseek_v3"),
        ("gpt-oss", "gpt_oss"),
        ("granite", "granite"),
        ("qwen3", "qwen3"),
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("gemma", "gemma"),
        ("phi", "phi"),
    ):
        if needle in n:
            return family
    return None
