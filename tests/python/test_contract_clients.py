"""Contract tests for the rest of Dify's daemon client, one call per Dify method.

Each test makes the calls Dify 1.14's client classes (`api/core/plugin/impl/*.py`)
make, with their routes, bodies and headers, and parses the answers with
`dify_client`'s models, which hold Dify's own field rules. Runs against the
daemon at PLUGIND_URL, like test_contract.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from dify_client import (
    CredentialsValidateFailedError,
    DifyPluginClient,
    InvokeServerUnavailableError,
    FetchFrom,
    ModelPropertyKey,
    ModelType,
    PluginCategory,
    PluginInvokeError,
)
from fake_openai import FakeOpenAI
from sdk_plugin import FIXTURES
from test_contract import IDENTIFIER_RE, install, wait_installed, zip_fixture

PLUGIND_URL = os.environ.get("PLUGIND_URL")
PLUGIND_KEY = os.environ.get("PLUGIND_KEY", "")

pytestmark = pytest.mark.skipif(not PLUGIND_URL, reason="PLUGIND_URL is not set: no daemon to test against")

USER = "user-1"


def package_dir(src: Path, out: Path) -> bytes:
    binary = os.environ.get("PLUGIND_BIN")
    if binary:
        subprocess.run([binary, "plugin", "package", str(src), "-o", str(out)], check=True, timeout=120)
    else:
        zip_fixture(src, out)
    return out.read_bytes()


def fixture_package(fixture: str, tmp: Path, version: str | None = None) -> bytes:
    """The fixture's package, at `version` when given (manifest version changed)."""
    src = FIXTURES / fixture
    if version is not None:
        copy = tmp / f"{fixture}-{version}"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", ".venv", "*.difypkg"))
        manifest = copy / "manifest.yaml"
        lines = manifest.read_text().splitlines()
        # The first line is the plugin's own version (meta.version is the format's).
        assert lines[0].startswith("version: ")
        lines[0] = f"version: {version}"
        manifest.write_text("\n".join(lines) + "\n")
        src = copy
    return package_dir(src, tmp / f"{fixture}-{version or 'base'}.difypkg")


@pytest.fixture(scope="module")
def client():
    c = DifyPluginClient(PLUGIND_URL, PLUGIND_KEY)
    yield c
    c.close()


def new_tenant() -> str:
    return str(uuid.uuid4())


def upload_and_install(client: DifyPluginClient, tenant: str, pkg: bytes) -> str:
    identifier = client.upload_pkg(tenant, pkg).unique_identifier
    install(client, tenant, identifier)
    return identifier


@pytest.fixture(scope="module")
def tool_tenant(client, tmp_path_factory):
    """A tenant with echo_tool installed: `(tenant, identifier)`."""
    tenant = new_tenant()
    return tenant, upload_and_install(client, tenant, fixture_package("echo_tool", tmp_path_factory.mktemp("tool")))


# --- PluginInstaller ---------------------------------------------------------------------------


def test_fetch_plugin_readme(client, tool_tenant):
    tenant, identifier = tool_tenant
    readme = client.fetch_plugin_readme(tenant, identifier, "en_US")
    assert readme == (FIXTURES / "echo_tool" / "README.md").read_text()
    # A language the package lacks falls back to the English readme.
    assert client.fetch_plugin_readme(tenant, identifier, "ja_JP") == readme


def test_list_plugins(client, tool_tenant):
    tenant, identifier = tool_tenant
    plugins = client.list_plugins(tenant)
    assert [p.plugin_unique_identifier for p in plugins] == [identifier]
    assert plugins[0].declaration.category == PluginCategory.Tool


def test_install_tasks_are_listed_and_deleted(client, tmp_path_factory):
    tenant = new_tenant()
    tmp = tmp_path_factory.mktemp("tasks")
    first = client.upload_pkg(tenant, fixture_package("echo_tool", tmp)).unique_identifier
    second = client.upload_pkg(tenant, fixture_package("echo_agent", tmp)).unique_identifier
    started = client.install_from_identifiers(tenant, [first], metas=[{}])
    if not started.all_installed:
        wait_installed(client, tenant, started.task_id)
    install(client, tenant, second)
    tasks = client.fetch_plugin_installation_tasks(tenant, 1, 256)
    assert len(tasks) == 2
    assert {p.plugin_unique_identifier for t in tasks for p in t.plugins} == {first, second}
    ours = next(t for t in tasks if t.id == started.task_id)
    assert [p.plugin_unique_identifier for p in ours.plugins] == [first]

    # Deleting the task's one item leaves the task without plugins.
    assert client.delete_plugin_installation_task_item(tenant, started.task_id, first) is True
    listed = {t.id: t for t in client.fetch_plugin_installation_tasks(tenant, 1, 256)}
    assert started.task_id not in listed or listed[started.task_id].plugins == []

    other = next(t.id for t in tasks if t.id != started.task_id)
    assert client.delete_plugin_installation_task(tenant, other) is True
    assert other not in {t.id for t in client.fetch_plugin_installation_tasks(tenant, 1, 256)}

    assert client.delete_all_plugin_installation_task_items(tenant) is True
    assert client.fetch_plugin_installation_tasks(tenant, 1, 256) == []
    # Deleting tasks uninstalls nothing.
    assert {p.plugin_unique_identifier for p in client.list_plugins(tenant)} == {first, second}


def test_upgrade_keeps_the_installation_id(client, tmp_path_factory):
    tenant = new_tenant()
    tmp = tmp_path_factory.mktemp("upgrade")
    old = upload_and_install(client, tenant, fixture_package("echo_tool", tmp))
    (before,) = client.list_plugins(tenant)
    new = client.upload_pkg(tenant, fixture_package("echo_tool", tmp, version="0.0.2")).unique_identifier
    assert IDENTIFIER_RE.match(new).group(3) == "0.0.2"

    started = client.upgrade_plugin(tenant, old, new, source="package", meta={})
    if not started.all_installed:
        wait_installed(client, tenant, started.task_id)
    (after,) = client.list_plugins(tenant)
    assert after.installation_id == before.installation_id
    assert after.plugin_unique_identifier == new and after.version == "0.0.2"
    assert after.declaration.version == "0.0.2"
    # The upgraded plugin answers calls.
    messages = client.invoke_tool(tenant, USER, "plugind/echo_tool", "echo_tool", "echo", {"text": "up"}, {"api_key": "k"})
    assert [m.message for m in messages] == [{"text": "up"}]


def test_fetch_missing_dependencies(client, tool_tenant, tmp_path_factory):
    tenant, installed = tool_tenant
    tmp = tmp_path_factory.mktemp("missing")
    newer = client.upload_pkg(tenant, fixture_package("echo_tool", tmp, version="0.0.3")).unique_identifier
    absent = client.upload_pkg(tenant, fixture_package("echo_agent", tmp)).unique_identifier
    missing = client.fetch_missing_dependencies(tenant, [installed, newer, absent])
    assert {(m.plugin_unique_identifier, m.current_identifier) for m in missing} == {(newer, installed), (absent, "")}


def test_check_tools_existence(client, tool_tenant):
    tenant, _ = tool_tenant
    found = client.check_tools_existence(
        tenant,
        [("plugind/echo_tool", "echo_tool"), ("plugind/echo_tool", "nothing"), ("plugind/absent", "echo_tool")],
    )
    assert found == [True, False, False]


# --- PluginDebuggingClient ---------------------------------------------------------------------


def test_debugging_key_is_stable_per_tenant(client):
    tenant = new_tenant()
    key = client.get_debugging_key(tenant)
    assert key and client.get_debugging_key(tenant) == key
    assert client.get_debugging_key(new_tenant()) != key


# --- PluginAgentClient -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_tenant(client, tmp_path_factory):
    tenant = new_tenant()
    upload_and_install(client, tenant, fixture_package("echo_agent", tmp_path_factory.mktemp("agent")))
    return tenant


def test_fetch_agent_strategy_providers(client, agent_tenant):
    (provider,) = client.fetch_agent_strategy_providers(agent_tenant)
    assert (provider.provider, provider.plugin_id) == ("echo_agent", "plugind/echo_agent")
    assert provider.meta.version == "0.0.1"
    (strategy,) = provider.declaration.strategies
    assert strategy.identity.name == "echo" and strategy.identity.provider == "echo_agent"
    assert [p.name for p in strategy.parameters] == ["query", "rounds"]


def test_fetch_agent_strategy_provider(client, agent_tenant):
    provider = client.fetch_agent_strategy_provider(agent_tenant, "plugind/echo_agent", "echo_agent")
    assert provider.declaration.identity.name == "echo_agent"
    assert [s.identity.name for s in provider.declaration.strategies] == ["echo"]


def test_invoke_agent_strategy(client, agent_tenant):
    messages = list(
        client.invoke_agent_strategy(agent_tenant, USER, "plugind/echo_agent", "echo_agent", "echo", {"query": "hi", "rounds": 2})
    )
    assert [m.type for m in messages] == ["log", "text", "text", "json", "log"]
    assert [m.message["text"] for m in messages if m.type == "text"] == ["round 0: hi\n", "round 1: hi\n"]


# --- PluginEndpointClient ----------------------------------------------------------------------


def test_endpoint_lifecycle(client, tmp_path_factory):
    tenant = new_tenant()
    identifier = upload_and_install(client, tenant, fixture_package("echo_endpoint", tmp_path_factory.mktemp("endpoint")))
    assert client.create_endpoint(tenant, USER, identifier, "first", {"greeting": "hi"}) is True

    (endpoint,) = client.list_endpoints(tenant)
    assert (endpoint.name, endpoint.enabled, endpoint.plugin_id) == ("first", True, "plugind/echo_endpoint")
    assert endpoint.tenant_id == tenant and endpoint.settings == {"greeting": "hi"} and endpoint.hook_id
    assert [s.name for s in endpoint.declaration.settings] == ["greeting"]
    assert {e.path for e in endpoint.declaration.endpoints or []} == {"/hello", "/stream"}
    assert [e.id for e in client.list_endpoints_for_single_plugin(tenant, "plugind/echo_endpoint")] == [endpoint.id]
    assert client.list_endpoints_for_single_plugin(tenant, "plugind/absent") == []

    assert client.update_endpoint(tenant, USER, endpoint.id, "renamed", {"greeting": "hey"}) is True
    (updated,) = client.list_endpoints(tenant)
    assert (updated.name, updated.settings) == ("renamed", {"greeting": "hey"})

    assert client.disable_endpoint(tenant, endpoint.id) is True
    assert client.list_endpoints(tenant)[0].enabled is False
    assert client.enable_endpoint(tenant, endpoint.id) is True
    assert client.list_endpoints(tenant)[0].enabled is True

    assert client.delete_endpoint(tenant, "u1", endpoint.id) is True
    assert client.list_endpoints(tenant) == []


# --- PluginModelClient through an OpenAI-compatible plugin --------------------------------------


@pytest.fixture(scope="module")
def openai_server():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture(scope="module")
def oai_tenant(client, tmp_path_factory):
    """A tenant with oai_model (shaped like openai_api_compatible) and echo_model installed."""
    tenant = new_tenant()
    tmp = tmp_path_factory.mktemp("oai")
    upload_and_install(client, tenant, fixture_package("oai_model", tmp))
    upload_and_install(client, tenant, fixture_package("echo_model", tmp))
    return tenant


def oai_credentials(server: FakeOpenAI, **extra) -> dict:
    return {"endpoint_url": server.base_url, "api_key": "sk-test", "mode": "chat", "context_size": "4096", **extra}


OAI = ("plugind/oai_model", "oai_model")


def test_model_plugins_are_listed_as_dify_parses_them(client, oai_tenant):
    # The plugin list and the model provider list both carry the credential
    # forms; Dify rejects either whole when one `show_on` is null.
    plugins = {p.plugin_id: p for p in client.list_plugins(oai_tenant)}
    assert set(plugins) == {"plugind/oai_model", "plugind/echo_model"}
    schema = plugins["plugind/oai_model"].declaration.model.model_credential_schema
    fields = {f.variable: f for f in schema.credential_form_schemas}
    assert fields["mode"].show_on[0].variable == "__model_type"
    assert fields["api_key"].show_on == [] and fields["api_key"].options == []
    assert [(o.value, o.show_on) for o in fields["mode"].options] == [("completion", []), ("chat", [])]

    providers = {p.plugin_id: p for p in client.fetch_model_providers(oai_tenant)}
    declaration = providers["plugind/oai_model"].declaration
    assert declaration.configurate_methods == ["customizable-model"]
    assert declaration.supported_model_types == [ModelType.Llm]
    assert declaration.model_credential_schema.credential_form_schemas == schema.credential_form_schemas


def test_model_credentials_are_validated_by_the_upstream_api(client, oai_tenant, openai_server):
    plugin_id, provider = OAI
    assert client.validate_provider_credentials(oai_tenant, USER, plugin_id, provider, {}) is True
    credentials = oai_credentials(openai_server)
    assert client.validate_model_credentials(oai_tenant, USER, plugin_id, provider, "llm", "gpt-x", credentials) is True
    assert openai_server.requests[-1]["auth"] == "Bearer sk-test"
    assert openai_server.requests[-1]["body"]["model"] == "gpt-x"
    with pytest.raises(CredentialsValidateFailedError, match="401"):
        client.validate_model_credentials(
            oai_tenant, USER, plugin_id, provider, "llm", "gpt-x", oai_credentials(openai_server, api_key="bad")
        )


def test_model_schema_of_a_customizable_model(client, oai_tenant, openai_server):
    plugin_id, provider = OAI
    schema = client.get_model_schema(oai_tenant, USER, plugin_id, provider, "llm", "gpt-x", oai_credentials(openai_server))
    assert schema is not None
    assert (schema.model, schema.model_type, schema.fetch_from) == ("gpt-x", ModelType.Llm, FetchFrom.CustomizableModel)
    assert schema.model_properties[ModelPropertyKey.ContextSize] == 4096
    assert schema.model_properties[ModelPropertyKey.Mode] == "chat"
    assert "temperature" in {r.name for r in schema.parameter_rules}


def prompt(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_llm_streaming_invoke(client, oai_tenant, openai_server):
    plugin_id, provider = OAI
    chunks = list(
        client.invoke_llm(
            oai_tenant, USER, plugin_id, provider, "gpt-x", oai_credentials(openai_server), prompt("hello there"),
            model_parameters={"temperature": 0.1}, stop=[], tools=[], stream=True,
        )
    )
    assert "".join(c.delta.message.content or "" for c in chunks) == "echo: hello there"
    assert openai_server.requests[-1]["body"]["stream"] is True
    last = chunks[-1]
    assert last.delta.finish_reason == "stop"
    assert last.delta.usage is not None and last.delta.usage.completion_tokens == 3


def test_llm_blocking_invoke(client, oai_tenant, openai_server):
    plugin_id, provider = OAI
    chunks = list(
        client.invoke_llm(
            oai_tenant, None, plugin_id, provider, "gpt-x", oai_credentials(openai_server), prompt("one shot"),
            model_parameters={}, stream=False,
        )
    )
    assert len(chunks) == 1
    assert chunks[0].delta.message.content == "echo: one shot"
    assert chunks[0].delta.usage.prompt_tokens == 3
    assert openai_server.requests[-1]["body"].get("stream") in (None, False)


def test_llm_num_tokens(client, oai_tenant):
    # echo_model counts words (the OpenAI-compatible client would need a tokenizer download).
    messages = [{"role": "user", "content": "three little words"}]
    count = client.get_llm_num_tokens(oai_tenant, USER, "plugind/echo_model", "echo_model", "echo-llm", {"api_key": "k"}, messages)
    assert count == 3


def test_upstream_failure_reaches_dify_typed(client, oai_tenant):
    plugin_id, provider = OAI
    dead = {"endpoint_url": "http://127.0.0.1:9/v1", "mode": "chat", "context_size": "4096"}
    # The SDK maps the refused connection to InvokeServerUnavailableError; Dify re-raises it by that name.
    with pytest.raises(InvokeServerUnavailableError):
        list(client.invoke_llm(oai_tenant, USER, plugin_id, provider, "gpt-x", dead, prompt("x"), model_parameters={}))


def test_text_embedding_and_its_token_counts(client, oai_tenant):
    plugin_id, provider = "plugind/echo_model", "echo_model"
    result = client.invoke_text_embedding(
        oai_tenant, USER, plugin_id, provider, "echo-embedding", {"api_key": "k"}, ["a b"], "document"
    )
    assert result.model == "echo-embedding" and len(result.embeddings) == 1 and len(result.embeddings[0]) == 8
    assert result.usage.tokens == 2
    counts = client.get_text_embedding_num_tokens(
        oai_tenant, USER, plugin_id, provider, "echo-embedding", {"api_key": "k"}, ["a b", "c"]
    )
    assert counts == [2, 1]


# --- PluginToolManager: credentials ------------------------------------------------------------


def test_tool_provider_credentials(client, tool_tenant):
    tenant, _ = tool_tenant
    assert client.validate_tool_credentials(tenant, USER, "plugind/echo_tool", "echo_tool", {"api_key": "good"}) is True
    with pytest.raises(PluginInvokeError, match="api_key is bad"):
        client.validate_tool_credentials(tenant, USER, "plugind/echo_tool", "echo_tool", {"api_key": "bad"})


# --- PluginAssetManager ------------------------------------------------------------------------


def test_fetch_asset_of_a_listed_icon(client, tool_tenant):
    tenant, _ = tool_tenant
    (plugin,) = client.list_plugins(tenant)
    icon = client.fetch_asset(tenant, plugin.declaration.icon)
    assert icon == (FIXTURES / "echo_tool" / "_assets" / "icon.svg").read_bytes()
    with pytest.raises(ValueError, match="can not found asset"):
        client.fetch_asset(tenant, "0" * 64)


# --- datasource and trigger declarations, as Dify lists them -----------------------------------


def test_datasource_providers_are_listed_as_dify_parses_them(client, tmp_path_factory):
    tenant = new_tenant()
    upload_and_install(client, tenant, fixture_package("echo_datasource", tmp_path_factory.mktemp("datasource")))
    (provider,) = client.fetch_installed_datasource_providers(tenant)
    assert provider.plugin_id == "plugind/echo_datasource"
    declaration = provider.declaration
    assert declaration.identity.name == provider.provider
    assert [c.name for c in declaration.credentials_schema] == ["api_key"]
    assert declaration.datasources and all(d.identity.provider == provider.provider for d in declaration.datasources)
    single = client.fetch_datasource_provider(tenant, provider.plugin_id, provider.provider)
    assert single.declaration.provider_type == declaration.provider_type
    (plugin,) = client.list_plugins(tenant)
    assert plugin.declaration.category == PluginCategory.Datasource
    assert plugin.declaration.datasource.identity.name == provider.provider


def test_trigger_providers_are_listed_as_dify_parses_them(client, tmp_path_factory):
    tenant = new_tenant()
    upload_and_install(client, tenant, fixture_package("echo_trigger", tmp_path_factory.mktemp("trigger")))
    (provider,) = client.fetch_trigger_providers(tenant)
    assert (provider.plugin_id, provider.provider) == ("plugind/echo_trigger", "echo_trigger")
    declaration = provider.declaration
    assert [s.name for s in declaration.subscription_schema] == ["webhook_id"]
    constructor = declaration.subscription_constructor
    assert [p.name for p in constructor.parameters] == ["channel"]
    assert [c.name for c in constructor.credentials_schema] == ["api_key"]
    assert [e.identity.name for e in declaration.events] == ["ping"]
    single = client.fetch_trigger_provider(tenant, "plugind/echo_trigger", "echo_trigger")
    assert single.declaration.events[0].identity.provider == "plugind/echo_trigger/echo_trigger"
    (plugin,) = client.list_plugins(tenant)
    assert plugin.declaration.category == PluginCategory.Trigger


# --- OAuthHandler and DynamicSelectClient ------------------------------------------------------


@pytest.fixture(scope="module")
def extras_tenant(client, tmp_path_factory):
    tenant = new_tenant()
    upload_and_install(client, tenant, fixture_package("echo_extras", tmp_path_factory.mktemp("extras")))
    return tenant


EXTRAS = ("plugind/echo_extras", "echo_extras")
REDIRECT = "https://dify.example/callback"


def test_oauth_authorization_credentials_and_refresh(client, extras_tenant):
    plugin_id, provider = EXTRAS
    system = {"client_id": "cid"}
    url = client.get_authorization_url(extras_tenant, USER, plugin_id, provider, REDIRECT, system).authorization_url
    assert url.startswith("https://auth.example/authorize?") and "client_id=cid" in url
    raw = b"GET /callback?code=abc HTTP/1.1\r\nHost: dify.example\r\n\r\n"
    got = client.get_oauth_credentials(extras_tenant, USER, plugin_id, provider, REDIRECT, system, raw)
    assert got.credentials["access_token"] == "token-abc" and got.expires_at == 1700000000
    refreshed = client.refresh_oauth_credentials(
        extras_tenant, USER, plugin_id, provider, REDIRECT, system, dict(got.credentials)
    )
    assert refreshed.credentials["access_token"] == "token-abc-refreshed" and refreshed.expires_at == 1800000000


def test_dynamic_select_options(client, extras_tenant):
    plugin_id, provider = EXTRAS
    options = client.fetch_dynamic_select_options(
        extras_tenant, USER, plugin_id, provider, "pick", {"api_key": "k1"}, "api-key", "choice"
    ).options
    assert [o.value for o in options] == ["red", "green", "key-k1"]
