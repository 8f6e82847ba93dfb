import pytest

from gateway.config import Config, load_config
from gateway.policy.keys import hash_key
from gateway.routing.families import guess_family
from gateway.routing.ability import facts_from_name
from gateway.yamlfile import YamlFileError


def test_errors_name_field_and_position(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "server:\n"
        "  port: abc\n"
        "backends:\n"
        "  - name: a\n"
        "    url: ftp://x\n"
        "    meter: {type: dcgm}\n"
        "  - url: http://x:1\n"
        "    colour: blue\n"
    )
    with pytest.raises(YamlFileError) as info:
        load_config(path)
    problems = info.value.problems
    assert any(p.startswith(f"{path}:2:3: server.port:") for p in problems)
    assert any(p.startswith(f"{path}:5:5: backends[0].url:") for p in problems)
    assert any(p.startswith(f"{path}:6:5: backends[0].meter.url: Field required") for p in problems)
    assert any(p.startswith(f"{path}:7:5: backends[1].name: Field required") for p in problems)
    assert any(p.startswith(f"{path}:8:5: backends[1].colour: Extra inputs") for p in problems)


def test_invalid_yaml_has_position(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("backends:\n  - name: [unclosed\n")
    with pytest.raises(YamlFileError) as info:
        load_config(path)
    assert f"{path}:3:1: invalid YAML" in str(info.value)


def test_valid_config_and_relative_paths(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("backends:\n  - name: a\n    url: http://127.0.0.1:9/v1/\nledger:\n  path: usage.db\n")
    config = load_config(path)
    assert config.backends[0].url == "http://127.0.0.1:9"
    assert config.resolve(config.ledger.path) == str(tmp_path / "usage.db")
    assert config.backends[0].meter.type == "estimate"


def test_duplicate_backend_names_rejected():
    with pytest.raises(ValueError, match="used twice"):
        Config(backends=[{"name": "a", "url": "http://x:1"}, {"name": "a", "url": "http://x:2"}])


def test_guesses_from_names():
    assert facts_from_name("Qwen/Qwen3-32B").total_b == 32.0
    assert facts_from_name("meta-llama/Llama-3.1-8B-Instruct").total_b == 8.0
    assert facts_from_name("Qwen/Qwen3-30B-A3B").total_b == 30.0
    assert facts_from_name("some-model").total_b is None
    assert guess_family("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B") == "deepseek_r1"
    assert guess_family("openai/gpt-oss-20b") == "gpt_oss"
    assert hash_key("k") == "sha256:" + "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a"


def test_aliases_that_expand_past_the_bound_are_refused_at_once():
    import time

    from gateway.yamlfile import parse_yaml

    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
    )  # 9^9 values from nine lines
    started = time.monotonic()
    with pytest.raises(YamlFileError, match="aliases are expanded"):
        parse_yaml(laughs)
    assert time.monotonic() - started < 2
    with pytest.raises(YamlFileError, match="refers to itself"):
        parse_yaml("a: &x [1, *x]\n")
    assert parse_yaml("a: &x {b: 1}\nc: *x\n").data == {"a": {"b": 1}, "c": {"b": 1}}  # ordinary aliases still work
