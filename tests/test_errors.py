from gateway.errors import GatewayError, normalise


def test_gateway_error_is_openai_shape():
    err = GatewayError(404, "The model `x` does not exist.", code="model_not_found", param="model")
    assert err.body() == {
        "error": {"message": "The model `x` does not exist.", "type": "invalid_request_error",
                  "param": "model", "code": "model_not_found"}
    }


def test_normalise_vllm_nested_int_code():
    body = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": None, "code": 404}}
    assert normalise(404, body) == {
        "error": {"message": "The model `x` does not exist.", "type": "invalid_request_error", "param": None,
                  "code": "model_not_found"}
    }


def test_normalise_vllm_flat_old_shape_and_context_length():
    body = {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
            "type": "BadRequestError", "param": None, "code": 400}
    out = normalise(400, body)["error"]
    assert out["code"] == "context_length_exceeded"
    assert out["type"] == "invalid_request_error"
    assert out["message"].startswith("This model's maximum context length")


def test_normalise_non_openai_bodies():
    assert normalise(401, {"error": "Unauthorized"})["error"]["message"] == "Unauthorized"
    out = normalise(502, None)["error"]
    assert out == {"message": "upstream returned HTTP 502", "type": "server_error", "param": None, "code": None}
