"""Contract tests: a running daemon answers management calls in shapes Dify accepts.

Every response is parsed by `dify_client`, which applies Dify's own rules and
models. Needs PLUGIND_URL (e.g. http://127.0.0.1:5002) and PLUGIND_KEY (its
SERVER_KEY); skipped when PLUGIND_URL is unset. Packages are built with
`$PLUGIND_BIN plugin package <dir> -o <file>`; without PLUGIND_BIN a plain zip
of the fixture folder is uploaded instead (so the tests can also run against
another daemon).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from dify_client import (
    DifyPluginClient,
    LLMPollingStatus,
    PluginBundleDependency,
    PluginCategory,
    PluginDaemonBadRequestError,
    PluginDaemonClientSideError,
    PluginDaemonError,
    PluginDaemonInternalServerError,
    PluginInstallTaskStatus,
    PluginInvokeError,
)
from sdk_plugin import FIXTURES

PLUGIND_URL = os.environ.get("PLUGIND_URL")
PLUGIND_KEY = os.environ.get("PLUGIND_KEY", "")
INSTALL_TIMEOUT = float(os.environ.get("PLUGIND_INSTALL_TIMEOUT", "600"))

pytestmark = pytest.mark.skipif(not PLUGIND_URL, reason="PLUGIND_URL is not set: no daemon to test against")

# Reference: pkg/entities/plugin_entities/identity.go (author/name:version@checksum).
IDENTIFIER_RE = re.compile(r"^(?:([a-z0-9_-]{1,64})/)?([a-z0-9_-]{1,255}):([0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(?:-\w+)?)@([a-f0-9]{32,64})$")
SKIP_PARTS = {"__pycache__", ".venv", ".pytest_cache"}


def zip_fixture(src: Path, out: Path) -> None:
    """A plain .difypkg: every file of the fixture, sorted, no directory entries."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src)
            if SKIP_PARTS & set(rel.parts) or path.suffix in {".pyc", ".difypkg"}:
                continue
            zf.write(path, rel.as_posix())


def build_package(fixture: str, tmp: Path) -> bytes:
    out = tmp / f"{fixture}.difypkg"
    binary = os.environ.get("PLUGIND_BIN")
    if binary:
        subprocess.run([binary, "plugin", "package", str(FIXTURES / fixture), "-o", str(out)], check=True, timeout=120)
    else:
        zip_fixture(FIXTURES / fixture, out)
    data = out.read_bytes()
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    assert "manifest.yaml" in names and not any(n.endswith("/") for n in names)
    return data


@pytest.fixture(scope="module")
def client():
    c = DifyPluginClient(PLUGIND_URL, PLUGIND_KEY)
    yield c
    c.close()


@pytest.fixture(scope="module")
def tenant() -> str:
    return str(uuid.uuid4())


def wait_installed(client: DifyPluginClient, tenant: str, task_id: str) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT
    while True:
        task = client.fetch_plugin_installation_task(tenant, task_id)
        assert task.total_plugins >= 1 and len(task.plugins) == task.total_plugins
        if task.status == PluginInstallTaskStatus.Success:
            assert task.completed_plugins == task.total_plugins
            assert all(p.status == PluginInstallTaskStatus.Success for p in task.plugins)
            return
        if task.status == PluginInstallTaskStatus.Failed:
            pytest.fail(f"install task failed: {[p.message for p in task.plugins]}")
        if time.monotonic() > deadline:
            pytest.fail(f"install task still {task.status} after {INSTALL_TIMEOUT}s")
        time.sleep(1)


def install(client: DifyPluginClient, tenant: str, identifier: str) -> None:
    started = client.install_from_identifiers(tenant, [identifier], source="package", metas=[{}])
    if not started.all_installed:
        assert started.task_id
        wait_installed(client, tenant, started.task_id)


@pytest.fixture(scope="module")
def uploaded_tool(client, tenant, tmp_path_factory):
    pkg = build_package("echo_tool", tmp_path_factory.mktemp("pkg"))
    return client.upload_pkg(tenant, pkg, verify_signature=False)


@pytest.fixture(scope="module")
def installed_tool(client, tenant, uploaded_tool):
    install(client, tenant, uploaded_tool.unique_identifier)
    return uploaded_tool.unique_identifier


def make_bundle(dependencies: list[dict], packages: dict[str, bytes]) -> bytes:
    """A .difybundle: a bundle manifest, its icon, and packages under `_assets/`."""
    manifest = {
        "name": "kit",
        "labels": {"en_US": "Kit"},
        "description": {"en_US": "A kit"},
        "icon": "icon.svg",
        "version": "0.0.1",
        "author": "plugind",
        "type": "bundle",
        "dependencies": dependencies,
        "tags": [],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # JSON is YAML too; it keeps the test free of a YAML library.
        zf.writestr("manifest.yaml", json.dumps(manifest))
        zf.writestr("_assets/icon.svg", '<svg xmlns="http://www.w3.org/2000/svg"/>')
        for path, data in packages.items():
            zf.writestr(f"_assets/{path}", data)
    return buf.getvalue()


def find_installed(client, tenant, plugin_id: str):
    listed = client.list_plugins_with_total(tenant)
    return next((p for p in listed.list if p.plugin_id == plugin_id), None), listed


# --- upload and decode -----------------------------------------------------------------------


def test_upload_returns_identifier_and_manifest(uploaded_tool):
    match = IDENTIFIER_RE.match(uploaded_tool.unique_identifier)
    assert match, uploaded_tool.unique_identifier
    assert match.group(1, 2, 3) == ("plugind", "echo_tool", "0.0.1")
    manifest = uploaded_tool.manifest
    assert manifest.category == PluginCategory.Tool
    assert manifest.author == "plugind" and manifest.name == "echo_tool"
    assert manifest.tool is not None and manifest.tool.identity.name == "echo_tool"
    assert manifest.plugins.tools == ["provider/echo_tool.yaml"]


def test_decode_from_identifier_matches_upload(client, tenant, uploaded_tool):
    decoded = client.decode_plugin_from_identifier(tenant, uploaded_tool.unique_identifier)
    assert decoded.unique_identifier == uploaded_tool.unique_identifier
    assert decoded.manifest.name == "echo_tool"


def test_fetch_manifest_by_identifier(client, tenant, uploaded_tool):
    manifest = client.fetch_plugin_manifest(tenant, uploaded_tool.unique_identifier)
    assert manifest.category == PluginCategory.Tool
    assert manifest.version == "0.0.1"


def test_fetch_identifier_is_false_for_a_never_installed_package(client, tenant, tmp_path_factory):
    # As the reference daemon: an upload alone records no plugin, so Dify
    # uploads the package again before installing it.
    pkg = build_package("echo_model", tmp_path_factory.mktemp("pkg-model"))
    uploaded = client.upload_pkg(tenant, pkg, verify_signature=False)
    assert client.fetch_plugin_by_identifier(tenant, uploaded.unique_identifier) is False


def test_fetch_identifier_reports_an_installed_package(client, tenant, installed_tool):
    assert client.fetch_plugin_by_identifier(tenant, installed_tool) is True


def test_unknown_identifier_is_a_typed_error(client, tenant):
    bogus = "plugind/nothing:0.0.1@" + "0" * 64
    with pytest.raises(PluginDaemonError):
        client.fetch_plugin_manifest(tenant, bogus)


def test_a_deeply_nested_manifest_is_a_bad_request(client, tenant):
    # A hostile upload: a manifest nested 200 000 levels deep is refused
    # before it is parsed, with the error Dify shows for any bad package.
    deep = "{a: " * 200_000 + "1" + "}" * 200_000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.yaml", deep)
    with pytest.raises(PluginDaemonBadRequestError, match="nests deeper than 64 levels"):
        client.upload_pkg(tenant, buf.getvalue(), verify_signature=False)


def test_extract_asset_serves_a_file_of_the_uploaded_package(client, tenant, uploaded_tool):
    icon = (FIXTURES / "echo_tool" / "_assets" / "icon.svg").read_bytes()
    assert client.extract_asset(tenant, uploaded_tool.unique_identifier, "icon.svg") == icon
    # Dify takes any 200 for the file: a missing one, a path out of `_assets/`
    # and an unknown package must each be refused with another status.
    bogus = "plugind/nothing:0.0.1@" + "0" * 64
    for identifier, name in [
        (uploaded_tool.unique_identifier, "missing.svg"),
        (uploaded_tool.unique_identifier, "../manifest.yaml"),
        (bogus, "icon.svg"),
    ]:
        with pytest.raises(ValueError, match="can not found asset"):
            client.extract_asset(tenant, identifier, name)


def test_wrong_key_is_rejected(tenant):
    bad = DifyPluginClient(PLUGIND_URL, "not-the-key")
    try:
        with pytest.raises(PluginDaemonClientSideError, match="401"):
            bad.list_plugins_with_total(tenant)
    finally:
        bad.close()


# --- install, list, tools --------------------------------------------------------------------


def test_installed_plugin_is_listed(client, tenant, installed_tool):
    entry, listed = find_installed(client, tenant, "plugind/echo_tool")
    assert entry is not None, [p.plugin_id for p in listed.list]
    assert listed.total >= 1
    assert entry.plugin_unique_identifier == installed_tool
    assert entry.tenant_id == tenant
    assert entry.name == "echo_tool" and entry.version == "0.0.1"
    assert entry.checksum and installed_tool.endswith(entry.checksum)
    assert entry.source.value == "package"
    assert entry.declaration.category == PluginCategory.Tool
    assert entry.installation_id


def test_installation_fetch_batch(client, tenant, installed_tool):
    found = client.fetch_installations_by_ids(tenant, ["plugind/echo_tool"])
    assert [i.plugin_unique_identifier for i in found] == [installed_tool]


def test_tools_are_listed_with_declarations(client, tenant, installed_tool):
    providers = client.fetch_tool_providers(tenant)
    ours = [p for p in providers if p.plugin_id == "plugind/echo_tool"]
    assert len(ours) == 1
    provider = ours[0]
    assert provider.provider == "echo_tool"
    assert provider.plugin_unique_identifier == installed_tool
    names = {t.identity.name for t in provider.declaration.tools}
    assert names == {"echo", "json", "blob", "fail", "slow"}


def test_single_tool_provider(client, tenant, installed_tool):
    provider = client.fetch_tool_provider(tenant, "plugind/echo_tool", "echo_tool")
    assert provider.declaration.identity.name == "echo_tool"
    assert {t.identity.provider for t in provider.declaration.tools} == {"echo_tool"}


def test_tool_invoke_streams_text(client, tenant, installed_tool):
    messages = list(
        client.invoke_tool(tenant, "user-1", "plugind/echo_tool", "echo_tool", "echo", {"text": "hi"}, {"api_key": "k"})
    )
    assert [(m.type, m.message) for m in messages] == [("text", {"text": "hi"})]


def test_tool_error_reaches_dify_as_plugin_invoke_error(client, tenant, installed_tool):
    with pytest.raises(PluginInvokeError):
        list(
            client.invoke_tool(tenant, "user-1", "plugind/echo_tool", "echo_tool", "fail", {"reason": "x"}, {"api_key": "k"})
        )


# --- models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_model(client, tenant, tmp_path_factory):
    uploaded = client.upload_pkg(tenant, build_package("echo_model", tmp_path_factory.mktemp("pkg")))
    install(client, tenant, uploaded.unique_identifier)
    return uploaded


def test_model_provider_is_listed(client, tenant, installed_model):
    assert installed_model.manifest.category == PluginCategory.Model
    providers = [p for p in client.fetch_model_providers(tenant) if p.plugin_id == "plugind/echo_model"]
    assert len(providers) == 1
    declaration = providers[0].declaration
    assert providers[0].provider == "echo_model" and providers[0].tenant_id == tenant
    assert set(declaration.supported_model_types) == {"llm", "text-embedding"}
    assert {m.model for m in declaration.models} == {"echo-llm", "echo-embedding"}


def test_llm_polling_runs_to_a_result(client, tenant, installed_model):
    call = {"tenant_id": tenant, "user_id": "user-1", "plugin_id": "plugind/echo_model", "provider": "echo_model", "model": "echo-llm"}
    polled = client.start_llm_polling(**call, credentials={"api_key": "k", "checks": 1}, text="hi there")
    statuses = [polled.status]
    assert polled.next_check_after_seconds == 1 and polled.max_attempts == 2
    while polled.status == LLMPollingStatus.Running and len(statuses) < 5:
        polled = client.check_llm_polling(**call, credentials={"api_key": "k"}, state=polled.plugin_state)
        statuses.append(polled.status)
    assert statuses == [LLMPollingStatus.Running, LLMPollingStatus.Running, LLMPollingStatus.Succeeded]
    assert polled.result["message"]["content"] == "echo: hi there"
    failed = client.check_llm_polling(**call, credentials={"api_key": "k"}, state={"text": "fail", "left": 0})
    assert failed.status == LLMPollingStatus.Failed and failed.error == "the job failed"


def test_llm_polling_plugin_errors_are_http_500_as_the_reference_answers(client, tenant, installed_model):
    call = {"tenant_id": tenant, "user_id": "user-1", "plugin_id": "plugind/echo_model", "provider": "echo_model", "model": "echo-llm"}
    with pytest.raises(PluginDaemonInternalServerError, match="500"):
        client.start_llm_polling(**call, credentials={"api_key": "bad"}, text="hi")


# --- uninstall -------------------------------------------------------------------------------


def test_another_tenants_installation_id_is_done_and_left_alone(client, tenant, installed_tool):
    entry, _ = find_installed(client, tenant, "plugind/echo_tool")
    assert entry is not None
    assert client.uninstall(str(uuid.uuid4()), entry.installation_id) is True
    still, _ = find_installed(client, tenant, "plugind/echo_tool")
    assert still is not None and still.installation_id == entry.installation_id


def test_ids_that_are_no_uuid_are_bad_requests(client, tenant):
    with pytest.raises(PluginDaemonBadRequestError):
        client.uninstall(tenant, "garbage")
    with pytest.raises(PluginDaemonBadRequestError):
        client.delete_plugin_installation_task(tenant, "garbage")
    assert client.delete_plugin_installation_task(tenant, str(uuid.uuid4())) is True


def test_uninstall_removes_plugin(client, tenant, installed_tool):
    entry, _ = find_installed(client, tenant, "plugind/echo_tool")
    assert entry is not None
    assert client.uninstall(tenant, entry.installation_id) is True
    after, _ = find_installed(client, tenant, "plugind/echo_tool")
    assert after is None


def test_uninstall_of_absent_installation_is_true(client, tenant):
    assert client.uninstall(tenant, str(uuid.uuid4())) is True


# --- dispatch refusals ------------------------------------------------------------------------


def test_a_dispatch_body_over_the_limit_is_an_envelope_dify_reads(client, tenant):
    # Dify reads each line of a dispatch answer as an envelope; a plain-text
    # refusal would surface as an unreadable line instead of this error.
    with pytest.raises(ValueError, match=r"larger than \d+ bytes.*code: -400"):
        list(
            client.invoke_tool(
                tenant, "user-1", "plugind/echo_tool", "echo_tool", "echo", {"text": "x" * (3 * 1024 * 1024)}, {"api_key": "k"}
            )
        )


# --- endpoints -------------------------------------------------------------------------------


def test_removing_an_endpoint_that_is_gone_is_done(client, tenant):
    # Dify deletes endpoints idempotently, on the reference's exact answer.
    assert client.delete_endpoint(tenant, "u1", str(uuid.uuid4())) is True


# --- bundles ---------------------------------------------------------------------------------


def test_bundle_upload_answers_each_dependency(client, tenant, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    tool = build_package("echo_tool", tmp)
    model = build_package("echo_model", tmp)
    bundle = make_bundle(
        [
            {"type": "marketplace", "value": {"marketplace_pattern": "langgenius/openai:0.0.5"}},
            {"type": "package", "value": {"path": "tool"}},
            {"type": "github", "value": {"repo_pattern": "plugind/kit:^1.0.0/echo.difypkg"}},
            {"type": "package", "value": {"path": "model"}},
        ],
        {"tool": tool, "model": model},
    )
    deps = client.upload_bundle(tenant, bundle, verify_signature=False)
    assert [d.type for d in deps] == [
        PluginBundleDependency.Type.Marketplace,
        PluginBundleDependency.Type.Package,
        PluginBundleDependency.Type.Github,
        PluginBundleDependency.Type.Package,
    ]
    market, tool_dep, github, model_dep = (d.value for d in deps)
    assert isinstance(market, PluginBundleDependency.Marketplace)
    assert (market.organization, market.plugin, market.version) == ("langgenius", "openai", "0.0.5")
    assert isinstance(github, PluginBundleDependency.Github)
    assert github.repo_address == "https://github.com/plugind/kit"
    assert (github.repo, github.release, github.packages) == ("plugind/kit", "^1.0.0", "echo.difypkg")
    for dep, name, category in ((tool_dep, "echo_tool", PluginCategory.Tool), (model_dep, "echo_model", PluginCategory.Model)):
        assert isinstance(dep, PluginBundleDependency.Package)
        assert IDENTIFIER_RE.match(dep.unique_identifier), dep.unique_identifier
        assert dep.manifest.name == name and dep.manifest.category == category
        # Stored as a single upload is: Dify decodes it next.
        decoded = client.decode_plugin_from_identifier(tenant, dep.unique_identifier)
        assert decoded.unique_identifier == dep.unique_identifier


def test_bundle_with_a_missing_package_is_a_bad_request(client, tenant):
    bundle = make_bundle([{"type": "package", "value": {"path": "absent"}}], {})
    with pytest.raises(PluginDaemonBadRequestError, match="absent"):
        client.upload_bundle(tenant, bundle)


def test_plugin_package_uploaded_as_bundle_is_a_bad_request(client, tenant, tmp_path_factory):
    pkg = build_package("echo_tool", tmp_path_factory.mktemp("not-bundle"))
    with pytest.raises(PluginDaemonBadRequestError, match="bundle"):
        client.upload_bundle(tenant, pkg)


# --- listings by category and model bindings ---------------------------------------------------


@pytest.fixture(scope="module")
def listing_tenant(client, tmp_path_factory) -> str:
    """A tenant of its own with the tool and the model fixtures installed."""
    own = str(uuid.uuid4())
    tmp = tmp_path_factory.mktemp("listing")
    for fixture in ("echo_tool", "echo_model"):
        uploaded = client.upload_pkg(own, build_package(fixture, tmp))
        install(client, own, uploaded.unique_identifier)
    return own


def test_installed_plugin_ids_by_category(client, listing_tenant):
    assert client.list_installed_plugin_ids(listing_tenant, "tool").plugin_ids == ["plugind/echo_tool"]
    assert client.list_installed_plugin_ids(listing_tenant, "model").plugin_ids == ["plugind/echo_model"]
    assert client.list_installed_plugin_ids(listing_tenant, "extension").plugin_ids == []
    with pytest.raises(PluginDaemonBadRequestError):
        client.list_installed_plugin_ids(listing_tenant, "nonsense")


def test_plugins_listed_by_category(client, listing_tenant):
    tools = client.list_plugins_by_category(listing_tenant, "tool")
    assert [p.plugin_id for p in tools.list] == ["plugind/echo_tool"] and tools.has_more is False
    entry = tools.list[0]
    assert entry.declaration.category == PluginCategory.Tool and entry.installation_id == entry.id
    models = client.list_plugins_by_category(listing_tenant, "model", page=1, page_size=1)
    assert [p.plugin_id for p in models.list] == ["plugind/echo_model"] and models.has_more is False
    assert client.list_plugins_by_category(listing_tenant, "tool", query="ECHO_T").list
    assert client.list_plugins_by_category(listing_tenant, "tool", query="absent").list == []
    assert client.list_plugins_by_category(listing_tenant, "tool", tags=["search"]).list == []
    with pytest.raises(PluginDaemonClientSideError, match="400"):
        client.list_plugins_by_category(listing_tenant, "tool", tags=["not-a-tag"])


def test_model_bindings(client, listing_tenant):
    bindings = client.list_model_plugin_bindings(listing_tenant)
    assert len(bindings) == 1
    binding = bindings[0]
    assert (binding.provider, binding.plugin_id) == ("echo_model", "plugind/echo_model")
    assert binding.version == "0.0.1" and binding.verified is False
    assert binding.source.value == "package"
    installed = client.fetch_installations_by_ids(listing_tenant, ["plugind/echo_model"])
    assert [i.id for i in installed] == [binding.installation_id]
    assert installed[0].plugin_unique_identifier == binding.plugin_unique_identifier
