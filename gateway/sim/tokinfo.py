"""``GET /tokenizer_info`` (``--enable-tokenizer-info-endpoint``): the tokenizer's configuration
as vLLM returns it (the HF ``tokenizer_config.json`` fields plus ``tokenizer_class``), for the
simulator's Qwen-style tokenizer and ChatML template (``text.py``)."""

from __future__ import annotations

from .text import SPECIAL_IDS

# the template text.render_chat implements (tools, then the messages, then the generation prompt)
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n{{ tools | tojson }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
    "{%- endif %}"
)


def tokenizer_info(model: str, max_model_len: int) -> dict:
    special = sorted(SPECIAL_IDS.items(), key=lambda item: item[1])
    return {
        "tokenizer_class": "Qwen2TokenizerFast",
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": max(131072, max_model_len),
        "chat_template": CHAT_TEMPLATE,
        "additional_special_tokens": [piece for piece, _ in special if piece != "<|endoftext|>"],
        "added_tokens_decoder": {
            str(tid): {
                "content": piece,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": piece not in ("<think>", "</think>", "<tool_call>", "</tool_call>"),
            }
            for piece, tid in special
        },
        "name_or_path": model,
    }
