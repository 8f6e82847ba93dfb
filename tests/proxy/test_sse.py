import orjson

from gateway.proxy import sse


def test_splitter_reassembles_events_across_reads():
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    splitter = sse.EventSplitter()
    events = []
    for i in range(0, len(stream), 5):  # 5-byte reads cut events anywhere
        events.extend(splitter.feed(stream[i : i + 5]))
    assert events == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]
    assert splitter.pending == b""


def test_splitter_keeps_incomplete_tail():
    splitter = sse.EventSplitter()
    assert list(splitter.feed(b'data: {"a":1}\n\ndata: {"b"')) == [b'data: {"a":1}\n\n']
    assert splitter.pending == b'data: {"b"'


def test_classification():
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":1}}\n\n'
    finish = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    token = b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}\n\n'
    assert sse.is_usage(usage) and not sse.is_usage(token)
    assert sse.has_finish(finish) and not sse.has_finish(token)
    assert sse.is_done(sse.DONE)
    assert sse.is_error(b'data: {"error":{"message":"x"}}\n\n')


def test_reasoning_event_gets_both_names_only_when_missing():
    new_style = b'data: {"choices":[{"index":0,"delta":{"reasoning":"hm"}}]}\n\n'
    event, texts = sse.reasoning_event(new_style)
    assert sse.decode(event)["choices"][0]["delta"] == {"reasoning": "hm", "reasoning_content": "hm"}
    assert texts == ["hm"]
    old_style = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n'
    event, texts = sse.reasoning_event(old_style)
    assert sse.decode(event)["choices"][0]["delta"] == {"reasoning_content": "hm", "reasoning": "hm"}
    assert texts == ["hm"]
    both = b'data: {"choices":[{"index":0,"delta":{"reasoning":"hm","reasoning_content":"hm"}}]}\n\n'
    event, texts = sse.reasoning_event(both)
    assert event is both and texts == ["hm"]  # untouched: no re-serialisation


def test_encode_is_sse_framing():
    assert sse.encode({"a": 1}) == b'data: {"a":1}\n\n'
    assert orjson.loads(sse.encode({"a": 1})[6:]) == {"a": 1}


def test_running_usage_is_read_and_cut_out_without_a_json_round_trip():
    event = (b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}],'
             b'"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3}}\n\n')
    stripped, prompt, generated = sse.running_usage(event, strip=True)
    assert (prompt, generated) == (12, 3)
    assert stripped == b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}]}\n\n'
    assert sse.running_usage(event, strip=False) == (event, 12, 3)


def test_running_usage_with_nested_details_and_without_usage():
    event = (b'data: {"choices":[],"usage":{"prompt_tokens":7,"prompt_tokens_details":{"cached_tokens":4},'
             b'"completion_tokens":2}}\n\n')
    stripped, prompt, generated = sse.running_usage(event, strip=True)
    assert (prompt, generated) == (7, 2) and stripped == b'data: {"choices":[]}\n\n'
    plain = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    assert sse.running_usage(plain, strip=True) == (plain, -1, -1)
    completion_null = b'data: {"choices":[{"index":0,"text":"x"}],"usage":null}\n\n'
    assert sse.running_usage(completion_null, strip=True) == (completion_null, -1, -1)
