import math

from gateway.routing.features import DENSE_NAMES, SCAN_HEAD, SCAN_TAIL, extract, from_request, prompt_text, request_text


def dense(f, name):
    return f.as_dict()[name]


def test_chat_text_keeps_roles_and_text_parts_only():
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Describe this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                "and this",
            ]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}]},
            {"role": "tool", "content": "42"},
        ]
    }
    text = request_text(body)
    assert text.startswith("system: Be brief.\n\nuser: Describe this\nand this")
    assert "base64" not in text and "image_url" not in text
    assert 'lookup({"q": 1})' in text
    assert text.endswith("tool: 42")


def test_odd_inputs_do_not_break():
    assert request_text({"messages": []}) == ""
    assert request_text({}) == ""
    assert request_text({"messages": [None, "junk", {"content": None}]}) == "user: "
    assert request_text({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}) == "user: "
    assert request_text({"prompt": "Once upon"}) == "Once upon"
    assert request_text({"prompt": ["a", "b", 3]}) == "a\nb"
    assert request_text({"prompt": [1, 2, 3]}) == ""  # token ids carry no text
    assert request_text({"messages": [], "prompt": "fallback"}) == "fallback"
    for text in ("", "   ", "\n\n", "😀😀", "12345"):
        f = extract(text)
        assert len(f.dense) == len(DENSE_NAMES)
        assert all(math.isfinite(x) for x in f.dense)
    assert extract("").terms == frozenset()
    assert extract(None).n_chars == 0  # type: ignore[arg-type]


def test_terms_are_lowercased_letter_words_in_any_script():
    f = extract("What is 2+2? Naïve Bayes, naïve BAYES; x_1 über")
    assert f.terms == frozenset({"what", "is", "naïve", "bayes", "x", "über"})


def test_dense_features_react_to_content():
    plain = extract("Tell me a story about a dog.")
    maths = extract("Compute ∫ x^2 dx from 0 to 3, then solve 3x + 7 = 22 for x.")
    assert dense(maths, "digit_frac") > dense(plain, "digit_frac") == 0
    assert dense(maths, "math_frac") > dense(plain, "math_frac")
    code = extract("```python\ndef f(x):\n    return x + 1\n```")
    assert dense(code, "code") > dense(plain, "code")
    mcq = extract("Which is a prime?\nOptions:\nA. 4\nB. 6\nC. 7\nD. 9")
    assert dense(mcq, "options") == math.log1p(4)
    assert dense(mcq, "questions") == math.log1p(1)
    assert dense(extract("x" * 1000), "log_chars") > dense(extract("x" * 10), "log_chars")


def test_request_knobs():
    f = extract("hi", max_tokens=256, has_tools=True, has_schema=True, reasoning=True, turns=3)
    d = f.as_dict()
    assert d["has_max_tokens"] == 1 and d["log_max_tokens"] == math.log1p(256)
    assert d["has_tools"] == d["has_schema"] == d["reasoning"] == 1
    assert d["turns"] == math.log(3)
    d0 = extract("hi", max_tokens=None).as_dict()
    assert d0["has_max_tokens"] == d0["log_max_tokens"] == d0["has_tools"] == d0["reasoning"] == 0


def test_from_request_reads_the_body():
    body = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "bye"}],
        "max_completion_tokens": 64,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "chat_template_kwargs": {"enable_thinking": True},
    }
    d = from_request(body).as_dict()
    assert (d["log_max_tokens"], d["has_tools"], d["has_schema"], d["reasoning"]) == (math.log1p(64), 1, 1, 1)
    assert d["turns"] == math.log(3)
    quiet = from_request({"prompt": "x", "max_tokens": 5, "reasoning_effort": "none", "response_format": {"type": "text"}})
    assert (quiet.as_dict()["reasoning"], quiet.as_dict()["has_schema"]) == (0, 0)
    assert from_request({"messages": [], "reasoning_effort": "high"}).as_dict()["reasoning"] == 1
    assert from_request(body, reasoning=False).as_dict()["reasoning"] == 0


def test_long_prompts_scan_head_and_tail_but_count_everything():
    filler = "lorem " * 20_000
    text = "headword " + filler + " middleword " + filler + " tailword"
    f = extract(text)
    assert f.n_chars == len(text)
    assert {"headword", "tailword"} <= f.terms and "middleword" not in f.terms
    assert dense(f, "log_chars") == math.log1p(len(text))
    assert len(text) > SCAN_HEAD + SCAN_TAIL


def test_deterministic_and_hashable():
    text = prompt_text([{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
    a, b = extract(text, max_tokens=10), extract(text, max_tokens=10)
    assert a == b and hash(a) == hash(b)


def test_role_prefixes_are_not_words_and_structure_is_counted():
    text = prompt_text([{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Do this:\n1. prove it\n2) derive 3,000.5 and 2\n- check."}])
    f = extract(text)
    assert "user" not in f.terms and "system" not in f.terms and {"prove", "derive", "check"} <= f.terms
    d = f.as_dict()
    assert d["enumerated"] == math.log1p(3)
    assert d["numbers"] == math.log1p(4)  # 1, 2, 3,000.5, 2
    assert d["sentences"] == math.log1p(3)  # "brief. ", "1. " (a list number reads as one) and "check."
    assert extract("user: the user said hi").terms == frozenset({"the", "user", "said", "hi"})  # only the prefix goes
    assert 0 < dense(extract("internationalisation is complicated"), "long_words") <= 1
