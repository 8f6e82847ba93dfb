from gateway.config import BackendConfig, ModelConfig
from gateway.proxy.backends import BackendPool, ServedModel
from gateway.routing.catalog import Catalog


def catalog(served: dict[str, list[str]], models: dict | None = None) -> Catalog:
    pool = BackendPool([BackendConfig(name=b, url="http://127.0.0.1:1") for b in served], session_factory=None)
    for backend in pool.backends:
        backend.models = {m: ServedModel(m, 32768) for m in served[backend.name]}
    return Catalog({k: ModelConfig(**v) for k, v in (models or {}).items()}, pool)


def test_tiers_follow_size_order():
    c = catalog({"a": ["Qwen/Qwen3-1.7B"], "b": ["meta-llama/Llama-3.1-8B-Instruct"], "c": ["Qwen/Qwen3-32B"]})
    assert c.tiers == ["small", "medium", "large"]
    assert c.get("Qwen/Qwen3-1.7B").tier == "small"
    assert c.get("meta-llama/Llama-3.1-8B-Instruct").tier == "medium"
    assert c.get("Qwen/Qwen3-32B").tier == "large" and c.get("Qwen/Qwen3-32B").rank == 2
    assert c.largest().name == "Qwen/Qwen3-32B"


def test_same_size_shares_a_tier_and_backends_are_merged():
    c = catalog({"a": ["Qwen/Qwen3-8B", "x-7B"], "b": ["Qwen/Qwen3-8B", "y-70B"]})
    assert c.get("Qwen/Qwen3-8B").backends == ["a", "b"]
    assert c.tiers == ["small", "medium", "large"]
    assert c.get("y-70B").tier == "large"


def test_configured_facts_win_and_unknown_sizes_go_large():
    c = catalog(
        {"a": ["tiny", "mystery", "big"]},
        {"tiny": {"params_b": 1, "tier": "edge"}, "big": {"params_b": 70, "tier": "frontier", "max_model_len": 8192}},
    )
    assert c.tiers == ["edge", "frontier"]
    assert c.get("mystery").tier == "frontier"  # unknown size: never assume small
    assert c.get("big").max_model_len == 8192


def test_reasoning_kind_from_family():
    c = catalog({"a": ["Qwen/Qwen3-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "openai/gpt-oss-20b"]})
    assert c.get("Qwen/Qwen3-32B").reasoning == "hybrid"
    assert c.get("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B").reasoning == "always"
    assert c.get("openai/gpt-oss-20b").reasoning == "effort"
