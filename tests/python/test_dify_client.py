"""The contract client parses like Dify: checked against canned daemon answers.

If these parsing rules were looser than Dify's, the contract tests could pass
against a daemon Dify rejects; so the rules themselves are tested here.
"""

from __future__ import annotations

import json

import httpx
import pytest

import dify_client as dc


def client_for(handler) -> dc.DifyPluginClient:
    return dc.DifyPluginClient("http://daemon.test", "key", transport=httpx.MockTransport(handler))


def envelope(code: int, message: str, data) -> dict:
    return {"code": code, "message": message, "data": data}


def error_envelope(code: int, error_type: str, message: str) -> dict:
    return envelope(code, json.dumps({"message": message, "error_type": error_type, "args": None}), None)


def test_sends_api_key_and_returns_data():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["key"] = request.headers.get("X-Api-Key")
        seen["query"] = dict(request.url.params)
        return httpx.Response(200, json=envelope(0, "success", True))

    assert client_for(handler).fetch_plugin_by_identifier("t1", "a/b:0.0.1@x") is True
    assert seen == {"key": "key", "query": {"plugin_unique_identifier": "a/b:0.0.1@x"}}


def test_null_data_on_success_is_rejected():
    client = client_for(lambda r: httpx.Response(200, json=envelope(0, "success", None)))
    with pytest.raises(ValueError, match="empty data"):
        client.fetch_plugin_by_identifier("t1", "x")


def test_http_4xx_loses_typed_error():
    body = error_envelope(-404, "PluginNotFoundError", "nope")
    client = client_for(lambda r: httpx.Response(404, json=body))
    with pytest.raises(dc.PluginDaemonClientSideError):
        client.fetch_plugin_by_identifier("t1", "x")


def test_http_5xx_is_internal_server_error():
    client = client_for(lambda r: httpx.Response(502, text="bad gateway"))
    with pytest.raises(dc.PluginDaemonInternalServerError):
        client.fetch_plugin_by_identifier("t1", "x")


@pytest.mark.parametrize(
    ("error_type", "exception"),
    [
        ("PluginDaemonBadRequestError", dc.PluginDaemonBadRequestError),
        ("PluginDaemonNotFoundError", dc.PluginDaemonNotFoundError),
        ("PluginUniqueIdentifierError", dc.PluginUniqueIdentifierError),
        ("PluginNotFoundError", dc.PluginNotFoundError),
        ("PluginDaemonUnauthorizedError", dc.PluginDaemonUnauthorizedError),
        ("PluginPermissionDeniedError", dc.PluginPermissionDeniedError),
        ("PluginDaemonInternalServerError", dc.PluginDaemonInternalServerError),
        ("SomethingElse", dc.UnknownDaemonError),
    ],
)
def test_error_type_picks_exception(error_type, exception):
    client = client_for(lambda r: httpx.Response(200, json=error_envelope(-400, error_type, "why")))
    with pytest.raises(exception):
        client.fetch_plugin_by_identifier("t1", "x")


def test_error_message_must_be_json():
    client = client_for(lambda r: httpx.Response(200, json=envelope(-500, "plain text", None)))
    with pytest.raises(ValueError, match="plain text, code: -500"):
        client.fetch_plugin_by_identifier("t1", "x")


def test_wrong_data_type_is_a_parse_error():
    client = client_for(lambda r: httpx.Response(200, json=envelope(0, "success", {"list": "nope"})))
    with pytest.raises(ValueError, match="Failed to parse"):
        client.list_plugins_with_total("t1")


def sse(*items) -> bytes:
    return b"".join(b"data: " + json.dumps(i).encode() + b"\n\n" for i in items)


def stream_client(body: bytes, status: int = 200) -> dc.DifyPluginClient:
    return client_for(lambda r: httpx.Response(status, content=body, headers={"Content-Type": "text/event-stream"}))


def test_stream_yields_each_data_line_and_ignores_status():
    text = {"type": "text", "message": {"text": "hi"}, "meta": None}
    body = sse(envelope(0, "success", text)) + b"\n\n" + sse(envelope(0, "success", text))
    msgs = list(stream_client(body, status=500).invoke_tool("t", "u", "a/b", "b", "echo", {}, {}))
    assert [m.message for m in msgs] == [{"text": "hi"}, {"text": "hi"}]


def test_stream_plugin_invoke_error_maps_inner_type():
    inner = json.dumps({"error_type": "CredentialsValidateFailedError", "message": "bad key", "args": {}})
    body = sse(error_envelope(-500, "PluginInvokeError", inner))
    with pytest.raises(dc.CredentialsValidateFailedError, match="bad key"):
        stream_client(body).validate_tool_credentials("t", "u", "a/b", "b", {})


def test_stream_plugin_invoke_error_with_unknown_inner_type():
    inner = json.dumps({"error_type": "ValueError", "message": "boom", "args": {}})
    body = sse(error_envelope(-500, "PluginInvokeError", inner))
    with pytest.raises(dc.PluginInvokeError) as info:
        list(stream_client(body).invoke_tool("t", "u", "a/b", "b", "fail", {}, {}))
    assert json.loads(info.value.description)["message"] == "boom"


def test_stream_non_500_error_is_plain_value_error():
    body = sse(error_envelope(-404, "PluginNotFoundError", "gone"))
    with pytest.raises(ValueError, match="code: -404"):
        list(stream_client(body).invoke_tool("t", "u", "a/b", "b", "echo", {}, {}))


def test_stream_comment_line_breaks_dify():
    # Dify parses every non-blank line; an SSE comment is not safe as a keep-alive.
    body = b": keep-alive\n\n" + sse(envelope(0, "success", {"type": "text", "message": {}, "meta": None}))
    with pytest.raises(ValueError):
        list(stream_client(body).invoke_tool("t", "u", "a/b", "b", "echo", {}, {}))


# --- declaration shapes Dify's models insist on ----------------------------------------------


def credential_field(**extra) -> dict:
    return {"variable": "mode", "label": {"en_US": "Mode"}, "type": "select", **extra}


def model_provider(**extra) -> dict:
    return {
        "provider": "p",
        "label": {"en_US": "P"},
        "supported_model_types": ["llm"],
        "configurate_methods": ["customizable-model"],
        **extra,
    }


def test_model_form_show_on_must_be_a_list():
    schema = {"model": {"label": {"en_US": "Model"}}, "credential_form_schemas": [credential_field(show_on=None)]}
    with pytest.raises(ValueError, match="show_on"):
        dc.ProviderEntity.model_validate(model_provider(model_credential_schema=schema))
    option = {"value": "chat", "label": {"en_US": "Chat"}, "show_on": None}
    schema["credential_form_schemas"] = [credential_field(options=[option])]
    with pytest.raises(ValueError, match="show_on"):
        dc.ProviderEntity.model_validate(model_provider(model_credential_schema=schema))
    option["show_on"] = []
    provider = dc.ProviderEntity.model_validate(model_provider(model_credential_schema=schema))
    assert provider.model_credential_schema.credential_form_schemas[0].show_on == []


def test_model_provider_lists_and_model_properties_are_required():
    with pytest.raises(ValueError, match="supported_model_types"):
        dc.ProviderEntity.model_validate(model_provider(supported_model_types=None))
    with pytest.raises(ValueError, match="configurate_methods"):
        dc.ProviderEntity.model_validate(model_provider(configurate_methods=None))
    model = {"model": "m", "label": {"en_US": "M"}, "model_type": "llm", "fetch_from": "predefined-model"}
    with pytest.raises(ValueError, match="model_properties"):
        dc.AIModelEntity.model_validate({**model, "model_properties": None})
    assert dc.AIModelEntity.model_validate({**model, "model_properties": {}}).parameter_rules == []


def test_endpoint_settings_and_oauth_schemas_must_be_lists():
    with pytest.raises(ValueError, match="settings"):
        dc.EndpointProviderDeclaration.model_validate({"settings": None, "endpoints": None})
    with pytest.raises(ValueError, match="client_schema"):
        dc.OAuthSchema.model_validate({"client_schema": None})
    assert dc.EndpointProviderDeclaration.model_validate({"endpoints": None}).settings == []


def test_tools_need_their_provider_stamped():
    tool = {"identity": {"author": "a", "name": "t", "label": {"en_US": "T"}}, "parameters": None}
    with pytest.raises(ValueError, match="provider"):
        dc.ToolEntity.model_validate(tool)
    tool["identity"]["provider"] = "p"
    assert dc.ToolEntity.model_validate(tool).parameters == []


def test_extract_asset_is_the_body_of_a_200_and_fails_otherwise():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.path
        seen["query"] = dict(request.url.params)
        if request.url.params["file_path"] == "icon.svg":
            return httpx.Response(200, content=b"<svg/>")
        return httpx.Response(404, json=error_envelope(-404, "PluginDaemonNotFoundError", "file not found"))

    client = client_for(handler)
    assert client.extract_asset("t1", "a/b:0.0.1@x", "icon.svg") == b"<svg/>"
    assert seen == {"path": "/plugin/t1/extract-asset/", "query": {"plugin_unique_identifier": "a/b:0.0.1@x", "file_path": "icon.svg"}}
    with pytest.raises(ValueError, match="can not found asset a/b:0.0.1@x, 404"):
        client.extract_asset("t1", "a/b:0.0.1@x", "gone.svg")
