import math

from gateway.routing.features import (
    DENSE_NAMES,
    SCAN_HEAD,
    SCAN_TAIL,
    Prompt,
    extract,
    from_request,
    prompt_of,
    prompt_text,
    request_prompt,
    request_text,
)


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
    f = extract(Prompt("hi", "hi", turns=3), max_tokens=256, has_tools=True, has_schema=True, reasoning=True)
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
    assert d["turns"] == math.log(2)  # user messages
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
    p = prompt_of([{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
    a, b = extract(p, max_tokens=10), extract(p, max_tokens=10)
    assert a == b and hash(a) == hash(b)
    assert prompt_text([{"role": "user", "content": "x"}]) == p.text.replace("Prove that sqrt(2) is irrational.", "x")


def test_the_task_is_the_last_user_message_and_structure_is_counted():
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Summarise the report."},
                         {"role": "assistant", "content": "It says revenue rose."},
                         {"role": "user", "content": "Do this:\n1. prove it\n2) derive 3,000.5 and 2\n- check."}]}
    p = request_prompt(body)
    assert p.task.startswith("Do this:") and p.turns == 2 and p.system_chars == len("Be brief.")
    assert p.text.startswith("system: Be brief.\n\nuser: Summarise")
    f = extract(p)
    assert "user" not in f.terms and "summarise" not in f.terms and {"prove", "derive", "check"} <= f.terms
    d = f.as_dict()
    assert d["enumerated"] == math.log1p(3)
    assert d["numbers"] == math.log1p(4)  # 1, 2, 3,000.5, 2
    assert d["sentences"] == math.log1p(2)  # "1. " (a list number reads as one) and "check."
    assert d["system"] == math.log1p(len("Be brief."))
    assert 0 < d["context_share"] < 1  # the history is context, not the task
    assert 0 < dense(extract("internationalisation is complicated"), "long_words") <= 1


def kinds(text: str) -> set[str]:
    d = extract(prompt_of([{"role": "user", "content": text}])).as_dict()
    return {k[2:] for k, v in d.items() if k.startswith("k_") and v}


def test_what_kind_of_task():
    assert kinds("hi there") == {"greeting"}
    assert kinds("Thanks!") == {"greeting"}
    assert kinds("What is 2+2?") == {"arithmetic"}
    assert kinds("what's 17 * 3") == {"arithmetic"}
    assert kinds("What is the capital of France?") == {"lookup"}
    assert kinds("Write a haiku about autumn.") == {"creative"}
    assert kinds("Translate 'good morning' into Spanish.") == {"rewrite"}
    assert kinds("Write a Python function that merges intervals.") == {"code"}
    assert {"math", "reasoning"} <= kinds("Prove that the sum of the first n odd numbers is n^2.")
    assert kinds("How do I bake sourdough bread?") == {"explain"}
    assert kinds("¿Cuál es la capital de Francia?") == set()  # the cues are English
    assert extract("¿Cuál es la capital de Francia?").as_dict()["non_ascii"] > 0
    # a long message that opens with a greeting is not small talk
    assert "greeting" not in kinds("hi, " + "please review this contract clause by clause and list every risk " * 5)


def test_few_shot_prompts_read_their_last_example():
    shots = "".join(f"Question: what is {i} + {i}?\nAnswer: {2 * i}\n\n" for i in range(1, 6))
    f = extract(prompt_of([{"role": "user", "content": shots + "Question: What is the capital of Peru?\nAnswer:"}]))
    d = f.as_dict()
    assert d["shots"] == math.log1p(5) and d["k_lookup"] == 1
    assert "peru" in f.terms and "answer" in f.terms
