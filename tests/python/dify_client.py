"""A small stand-in for the Dify API server's plugin-daemon client.

It parses daemon responses the way Dify's `BasePluginClient`
(`api/core/plugin/impl/base.py` in langgenius/dify) does, so a test that passes
here is a response Dify accepts:

* non-stream routes: `raise_for_status()` first (a 4xx becomes a client-side
  error and the typed error is lost, a 5xx an internal-server error), then the
  body must be a `{code, message, data}` envelope whose `data` validates against
  the expected model; `code != 0` means `message` is itself JSON
  `{error_type, message}` and `error_type` picks the exception class; a success
  with `data: null` is an error too;
* stream routes: HTTP status is ignored; blank lines are skipped, a leading
  `data:` is stripped, each remaining line must be an envelope; an error
  envelope with code -500 is mapped like above, any other non-zero code is a
  plain ValueError.

The pydantic models mirror the fields Dify's own models require
(`api/core/plugin/entities/plugin.py`, `plugin_daemon.py`), with the same
types, patterns and defaults; fields Dify ignores are ignored here too.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# --- exceptions, named as Dify's -----------------------------------------------------------


class PluginDaemonError(Exception):
    """Base of the errors a daemon response can raise in Dify."""

    def __init__(self, description: str = ""):
        super().__init__(description)
        self.description = description


class PluginDaemonClientSideError(PluginDaemonError):
    """HTTP 4xx on a non-stream route (Dify loses the typed error then)."""


class PluginDaemonInternalServerError(PluginDaemonError):
    pass


class PluginDaemonBadRequestError(PluginDaemonError):
    pass


class PluginDaemonNotFoundError(PluginDaemonError):
    pass


class PluginUniqueIdentifierError(PluginDaemonError):
    pass


class PluginNotFoundError(PluginDaemonError):
    pass


class PluginDaemonUnauthorizedError(PluginDaemonError):
    pass


class PluginPermissionDeniedError(PluginDaemonError):
    pass


class PluginInvokeError(PluginDaemonError):
    """A plugin's own error; `description` is its `{error_type, message, args}` JSON."""


class PluginLLMPollingUnsupportedError(PluginDaemonError):
    pass


class PluginDaemonInnerError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class InvokeError(Exception):
    """Model-runtime invoke errors Dify re-raises from PluginInvokeError."""

    def __init__(self, description: str | None = None):
        super().__init__(description)
        self.description = description


class InvokeRateLimitError(InvokeError):
    pass


class InvokeAuthorizationError(InvokeError):
    pass


class InvokeBadRequestError(InvokeError):
    pass


class InvokeConnectionError(InvokeError):
    pass


class InvokeServerUnavailableError(InvokeError):
    pass


class CredentialsValidateFailedError(ValueError):
    pass


class EndpointSetupFailedError(ValueError):
    pass


class TriggerProviderCredentialValidationError(ValueError):
    pass


class TriggerPluginInvokeError(InvokeError):
    pass


class TriggerInvokeError(ValueError):
    pass


class EventIgnoreError(InvokeError):
    pass


class UnknownDaemonError(Exception):
    """Dify raises a bare Exception for an error_type it does not know."""


# Errors carried inside a PluginInvokeError, by the plugin's error_type.
_INVOKE_ERRORS: dict[str, Callable[[str | None], Exception]] = {
    cls.__name__: cls
    for cls in (
        InvokeRateLimitError,
        InvokeAuthorizationError,
        InvokeBadRequestError,
        InvokeConnectionError,
        InvokeServerUnavailableError,
        CredentialsValidateFailedError,
        EndpointSetupFailedError,
        TriggerProviderCredentialValidationError,
        TriggerPluginInvokeError,
        TriggerInvokeError,
        EventIgnoreError,
        PluginLLMPollingUnsupportedError,
    )
}

# Errors the daemon itself names in `error_type`.
_DAEMON_ERRORS: dict[str, type[PluginDaemonError]] = {
    cls.__name__: cls
    for cls in (
        PluginDaemonInternalServerError,
        PluginDaemonBadRequestError,
        PluginDaemonNotFoundError,
        PluginUniqueIdentifierError,
        PluginNotFoundError,
        PluginDaemonUnauthorizedError,
        PluginPermissionDeniedError,
    )
}


def raise_daemon_error(error_type: str, message: str) -> None:
    """Raise the exception Dify raises for a daemon error envelope."""
    if error_type == "PluginDaemonInnerError":
        raise PluginDaemonInnerError(code=-500, message=message)
    if error_type == "PluginInvokeError":
        inner = json.loads(message)
        factory = _INVOKE_ERRORS.get(inner.get("error_type"))
        if factory is not None:
            raise factory(inner.get("message"))
        raise PluginInvokeError(description=message)
    cls = _DAEMON_ERRORS.get(error_type)
    if cls is not None:
        raise cls(description=message)
    raise UnknownDaemonError(f"got unknown error from plugin daemon: {error_type}, message: {message}")


# --- response models, mirroring Dify's ------------------------------------------------------

T = TypeVar("T")


class PluginDaemonBasicResponse(BaseModel, Generic[T]):
    code: int
    message: str
    data: T | None = None


class DaemonErrorBody(BaseModel):
    error_type: str
    message: str


class I18nObject(BaseModel):
    en_US: str
    zh_Hans: str | None = None
    pt_BR: str | None = None
    ja_JP: str | None = None


class BasePluginEntity(BaseModel):
    id: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


class PluginInstallationSource(StrEnum):
    Github = "github"
    Marketplace = "marketplace"
    Package = "package"
    Remote = "remote"


class PluginCategory(StrEnum):
    Tool = "tool"
    Model = "model"
    Extension = "extension"
    AgentStrategy = "agent-strategy"
    Datasource = "datasource"
    Trigger = "trigger"


class PluginResourceRequirements(BaseModel):
    memory: int
    permission: dict[str, Any] | None = None


class ToolIdentity(BaseModel):
    author: str
    name: str
    label: I18nObject
    provider: str | None = None


class ToolEntity(BaseModel):
    identity: ToolIdentity
    parameters: list[dict[str, Any]] = Field(default_factory=list)
    description: dict[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    has_runtime_parameters: bool = False


class ToolProviderIdentity(BaseModel):
    author: str
    name: str
    description: I18nObject
    icon: str
    icon_dark: str | None = None
    label: I18nObject
    tags: list[str] | None = Field(default_factory=list)


class ToolProviderEntity(BaseModel):
    identity: ToolProviderIdentity
    plugin_id: str | None = None
    credentials_schema: list[dict[str, Any]] = Field(default_factory=list)
    oauth_schema: dict[str, Any] | None = None


class ToolProviderEntityWithPlugin(ToolProviderEntity):
    tools: list[ToolEntity] = Field(default_factory=list)


class AIModelEntity(BaseModel):
    model: str
    label: I18nObject
    model_type: str
    features: list[str] | None = None
    fetch_from: str
    model_properties: dict[str, Any]
    deprecated: bool = False
    parameter_rules: list[dict[str, Any]] = Field(default_factory=list)
    pricing: dict[str, Any] | None = None

    model_config = ConfigDict(protected_namespaces=())


class ProviderEntity(BaseModel):
    provider: str
    label: I18nObject
    description: I18nObject | None = None
    icon_small: I18nObject | None = None
    icon_large: I18nObject | None = None
    background: str | None = None
    help: dict[str, Any] | None = None
    supported_model_types: list[str]
    configurate_methods: list[str]
    models: list[AIModelEntity] = Field(default_factory=list)
    provider_credential_schema: dict[str, Any] | None = None
    model_credential_schema: dict[str, Any] | None = None

    model_config = ConfigDict(protected_namespaces=())


class AgentStrategyProviderEntity(BaseModel):
    identity: ToolProviderIdentity
    plugin_id: str | None = None
    strategies: list[dict[str, Any]] = Field(default_factory=list)


class EndpointProviderDeclaration(BaseModel):
    settings: list[dict[str, Any]] = Field(default_factory=list)
    endpoints: list[dict[str, Any]] | None = Field(default_factory=list)


class PluginDeclaration(BaseModel):
    class Plugins(BaseModel):
        tools: list[str] | None = Field(default_factory=list)
        models: list[str] | None = Field(default_factory=list)
        endpoints: list[str] | None = Field(default_factory=list)
        datasources: list[str] | None = Field(default_factory=list)
        triggers: list[str] | None = Field(default_factory=list)

    class Meta(BaseModel):
        minimum_dify_version: str | None = None
        version: str | None = None

    version: str
    author: str | None = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    name: str = Field(..., pattern=r"^[a-z0-9_-]{1,128}$")
    description: I18nObject
    icon: str
    icon_dark: str | None = None
    label: I18nObject
    category: PluginCategory
    created_at: datetime.datetime
    resource: PluginResourceRequirements
    plugins: Plugins
    tags: list[str] = Field(default_factory=list)
    repo: str | None = None
    verified: bool = False
    tool: ToolProviderEntity | None = None
    model: ProviderEntity | None = None
    endpoint: EndpointProviderDeclaration | None = None
    agent_strategy: AgentStrategyProviderEntity | None = None
    datasource: dict[str, Any] | None = None
    trigger: dict[str, Any] | None = None
    meta: Meta

    model_config = ConfigDict(protected_namespaces=())

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        from packaging.version import Version

        Version(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _category(cls, values: dict) -> dict:
        # Dify derives the category from which declaration is present.
        if values.get("tool"):
            values["category"] = PluginCategory.Tool
        elif values.get("model"):
            values["category"] = PluginCategory.Model
        elif values.get("datasource"):
            values["category"] = PluginCategory.Datasource
        elif values.get("agent_strategy"):
            values["category"] = PluginCategory.AgentStrategy
        elif values.get("trigger"):
            values["category"] = PluginCategory.Trigger
        else:
            values["category"] = PluginCategory.Extension
        return values


class PluginInstallation(BasePluginEntity):
    tenant_id: str
    endpoints_setups: int
    endpoints_active: int
    runtime_type: str
    source: PluginInstallationSource
    meta: Mapping[str, Any]
    plugin_id: str
    plugin_unique_identifier: str
    version: str
    checksum: str
    declaration: PluginDeclaration


class PluginEntity(PluginInstallation):
    name: str
    installation_id: str


class PluginListResponse(BaseModel):
    list: list[PluginEntity]
    total: int


class PluginVerification(BaseModel):
    class AuthorizedCategory(StrEnum):
        Langgenius = "langgenius"
        Partner = "partner"
        Community = "community"

    authorized_category: AuthorizedCategory


class PluginDecodeResponse(BaseModel):
    unique_identifier: str
    manifest: PluginDeclaration
    verification: PluginVerification | None = None


class PluginBundleDependency(BaseModel):
    """One entry of a bundle upload, as Dify's `core/plugin/entities/bundle.py` reads it."""

    class Type(StrEnum):
        Github = PluginInstallationSource.Github.value
        Marketplace = PluginInstallationSource.Marketplace.value
        Package = PluginInstallationSource.Package.value

    class Github(BaseModel):
        repo_address: str
        repo: str
        release: str
        packages: str

    class Marketplace(BaseModel):
        organization: str
        plugin: str
        version: str

    class Package(BaseModel):
        unique_identifier: str
        manifest: PluginDeclaration

    type: Type
    value: Github | Marketplace | Package


# The listings below have no Dify caller yet; their models follow the reference
# daemon's response structs (`internal/service/manage_plugin.go`).


class InstalledPluginIDs(BaseModel):
    plugin_ids: list[str]


class PluginCategoryListResponse(BaseModel):
    list: list[PluginEntity]
    has_more: bool


class ModelPluginBinding(BaseModel):
    provider: str
    installation_id: str
    plugin_id: str
    plugin_unique_identifier: str
    runtime_type: str
    source: PluginInstallationSource
    version: str
    verified: bool


class PluginInstallTaskStatus(StrEnum):
    Pending = "pending"
    Running = "running"
    Success = "success"
    Failed = "failed"


class PluginInstallTaskPluginStatus(BaseModel):
    plugin_unique_identifier: str
    plugin_id: str
    status: PluginInstallTaskStatus
    message: str
    icon: str
    labels: I18nObject
    source: str | None = None


class PluginInstallTask(BasePluginEntity):
    status: PluginInstallTaskStatus
    total_plugins: int
    completed_plugins: int
    plugins: list[PluginInstallTaskPluginStatus]


class PluginInstallTaskStartResponse(BaseModel):
    all_installed: bool
    task_id: str


class PluginToolProviderEntity(BaseModel):
    provider: str
    plugin_unique_identifier: str
    plugin_id: str
    declaration: ToolProviderEntityWithPlugin


class PluginModelProviderEntity(BaseModel):
    id: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    provider: str
    tenant_id: str
    plugin_unique_identifier: str
    plugin_id: str
    declaration: ProviderEntity


class PluginBasicBooleanResponse(BaseModel):
    result: bool
    credentials: dict | None = None


class LLMPollingStatus(StrEnum):
    Running = "running"
    Succeeded = "succeeded"
    Failed = "failed"


class LLMPollingResult(BaseModel):
    """A polling result with the rules of the SDK's and the reference's
    models: each status needs its own field."""

    status: LLMPollingStatus
    plugin_state: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    next_check_after_seconds: int | None = None
    expires_after_seconds: int | None = None
    max_attempts: int | None = None

    @model_validator(mode="after")
    def _payload(self) -> "LLMPollingResult":
        if self.status == LLMPollingStatus.Running and not self.plugin_state:
            raise ValueError("plugin_state is required when polling status is running")
        if self.status == LLMPollingStatus.Succeeded and self.result is None:
            raise ValueError("result is required when polling status is succeeded")
        if self.status == LLMPollingStatus.Failed and not self.error:
            raise ValueError("error is required when polling status is failed")
        return self


class ToolInvokeMessage(BaseModel):
    type: str
    message: dict[str, Any] | None
    meta: dict[str, Any] | None = None


# --- the client ------------------------------------------------------------------------------


class DifyPluginClient:
    """Calls a daemon at `base_url` with `X-Api-Key: api_key`, parsing like Dify."""

    def __init__(
        self, base_url: str, api_key: str, timeout: float = 600.0, transport: httpx.BaseTransport | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.http = httpx.Client(timeout=timeout, trust_env=False, transport=transport)

    def close(self) -> None:
        self.http.close()

    def _kwargs(self, headers, data, params, files) -> dict[str, Any]:
        prepared = dict(headers or {})
        prepared["X-Api-Key"] = self.api_key
        kwargs: dict[str, Any] = {"headers": prepared, "params": params, "files": files}
        if isinstance(data, dict) and prepared.get("Content-Type") == "application/json":
            kwargs["content"] = json.dumps(data)
        elif isinstance(data, dict):
            kwargs["data"] = data
        elif data is not None:
            kwargs["content"] = data
        return kwargs

    def request(self, method: str, path: str, *, headers=None, data=None, params=None, files=None) -> httpx.Response:
        return self.http.request(method, f"{self.base_url}/{path}", **self._kwargs(headers, data, params, files))

    def request_with_response(
        self,
        method: str,
        path: str,
        type_: Any,
        *,
        headers: dict | None = None,
        data: Any = None,
        params: dict | None = None,
        files: dict | None = None,
        transformer: Callable[[dict], dict] | None = None,
    ) -> Any:
        """Dify's `_request_with_plugin_daemon_response`."""
        response = self.request(method, path, headers=headers, data=data, params=params, files=files)
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as e:
            if e.response.status_code < 500:
                raise PluginDaemonClientSideError(description=str(e)) from e
            raise PluginDaemonInternalServerError(description=str(e)) from e

        try:
            body = response.json()
            if transformer:
                body = transformer(body)
            rep = PluginDaemonBasicResponse[type_].model_validate(body)
        except Exception as e:
            raise ValueError(f"Failed to parse response from plugin daemon, url: {path}: {e}") from e

        if rep.code != 0:
            try:
                error = DaemonErrorBody.model_validate(json.loads(rep.message))
            except Exception as e:
                raise ValueError(f"{rep.message}, code: {rep.code}") from e
            raise_daemon_error(error.error_type, error.message)
        if rep.data is None:
            raise ValueError("got empty data from plugin daemon")
        return rep.data

    def stream_lines(self, method: str, path: str, *, headers=None, data=None, params=None) -> Iterator[str]:
        """Dify's `_stream_request`: the non-blank lines, `data:` prefix removed."""
        kwargs = self._kwargs(headers, data, params, None)
        with self.http.stream(method, f"{self.base_url}/{path}", **kwargs) as response:
            for raw in response.iter_lines():
                line = raw.strip()
                if line.startswith("data:"):
                    line = line[5:].strip()
                if line:
                    yield line

    def request_with_response_stream(
        self, method: str, path: str, type_: Any, *, headers=None, data=None, params=None
    ) -> Iterator[Any]:
        """Dify's `_request_with_plugin_daemon_response_stream`."""
        for line in self.stream_lines(method, path, headers=headers, data=data, params=params):
            try:
                rep = PluginDaemonBasicResponse[type_].model_validate_json(line)
            except (ValueError, TypeError):
                try:
                    line_data = json.loads(line)
                except (ValueError, TypeError):
                    raise ValueError(line) from None
                raise ValueError(line_data.get("error", line)) from None
            if rep.code != 0:
                if rep.code == -500:
                    try:
                        error = DaemonErrorBody.model_validate(json.loads(rep.message))
                    except Exception:
                        raise PluginDaemonInnerError(code=rep.code, message=rep.message) from None
                    raise_daemon_error(error.error_type, error.message)
                raise ValueError(f"plugin daemon: {rep.message}, code: {rep.code}")
            if rep.data is None:
                raise ValueError("got empty data from plugin daemon")
            yield rep.data

    # --- management calls, as Dify's PluginInstaller / managers make them ----------------------

    def upload_pkg(self, tenant_id: str, pkg: bytes, verify_signature: bool = False) -> PluginDecodeResponse:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/install/upload/package",
            PluginDecodeResponse,
            files={"dify_pkg": ("dify_pkg", pkg, "application/octet-stream")},
            data={"verify_signature": "true" if verify_signature else "false"},
        )

    def upload_bundle(self, tenant_id: str, bundle: bytes, verify_signature: bool = False) -> list[PluginBundleDependency]:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/install/upload/bundle",
            list[PluginBundleDependency],
            files={"dify_bundle": ("dify_bundle", bundle, "application/octet-stream")},
            data={"verify_signature": "true" if verify_signature else "false"},
        )

    def list_installed_plugin_ids(self, tenant_id: str, category: str) -> InstalledPluginIDs:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/installation/ids",
            InstalledPluginIDs,
            params={"category": category},
        )

    def list_plugins_by_category(
        self,
        tenant_id: str,
        category: str,
        page: int = 1,
        page_size: int = 256,
        query: str | None = None,
        tags: list[str] | None = None,
        language: str | None = None,
    ) -> PluginCategoryListResponse:
        params: list[tuple[str, Any]] = [("page", page), ("page_size", page_size)]
        if query is not None:
            params.append(("query", query))
        params.extend(("tags", t) for t in tags or [])
        if language is not None:
            params.append(("language", language))
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/{category}/list",
            PluginCategoryListResponse,
            params=params,
        )

    def list_model_plugin_bindings(self, tenant_id: str) -> list[ModelPluginBinding]:
        return self.request_with_response(
            "GET", f"plugin/{tenant_id}/management/models/bindings", list[ModelPluginBinding]
        )

    def decode_plugin_from_identifier(self, tenant_id: str, identifier: str) -> PluginDecodeResponse:
        # Dify sends a GET with a JSON body here.
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/decode/from_identifier",
            PluginDecodeResponse,
            data={"plugin_unique_identifier": identifier},
            headers={"Content-Type": "application/json"},
        )

    def fetch_plugin_manifest(self, tenant_id: str, identifier: str) -> PluginDeclaration:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/fetch/manifest",
            PluginDeclaration,
            params={"plugin_unique_identifier": identifier},
        )

    def fetch_plugin_by_identifier(self, tenant_id: str, identifier: str) -> bool:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/fetch/identifier",
            bool,
            params={"plugin_unique_identifier": identifier},
        )

    def extract_asset(self, tenant_id: str, plugin_unique_identifier: str, filename: str) -> bytes:
        """Dify's `PluginAssetManager.extract_asset`: any status but 200 fails, and the body is the file."""
        response = self.request(
            "GET",
            f"plugin/{tenant_id}/extract-asset/",
            params={"plugin_unique_identifier": plugin_unique_identifier, "file_path": filename},
        )
        if response.status_code != 200:
            raise ValueError(f"can not found asset {plugin_unique_identifier}, {response.status_code}")
        return response.content

    def install_from_identifiers(
        self, tenant_id: str, identifiers: list[str], source: str = "package", metas: list[dict] | None = None
    ) -> PluginInstallTaskStartResponse:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/install/identifiers",
            PluginInstallTaskStartResponse,
            data={
                "plugin_unique_identifiers": identifiers,
                "source": source,
                "metas": metas if metas is not None else [{} for _ in identifiers],
            },
            headers={"Content-Type": "application/json"},
        )

    def fetch_plugin_installation_task(self, tenant_id: str, task_id: str) -> PluginInstallTask:
        return self.request_with_response(
            "GET", f"plugin/{tenant_id}/management/install/tasks/{task_id}", PluginInstallTask
        )

    def delete_plugin_installation_task(self, tenant_id: str, task_id: str) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/install/tasks/{task_id}/delete",
            bool,
        )

    def fetch_plugin_installation_tasks(self, tenant_id: str, page: int = 1, page_size: int = 256) -> list:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/install/tasks",
            list[PluginInstallTask],
            params={"page": page, "page_size": page_size},
        )

    def list_plugins_with_total(self, tenant_id: str, page: int = 1, page_size: int = 256) -> PluginListResponse:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/list",
            PluginListResponse,
            params={"page": page, "page_size": page_size, "response_type": "paged"},
        )

    def fetch_installations_by_ids(self, tenant_id: str, plugin_ids: list[str]) -> list[PluginInstallation]:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/installation/fetch/batch",
            list[PluginInstallation],
            data={"plugin_ids": plugin_ids},
            headers={"Content-Type": "application/json"},
        )

    def uninstall(self, tenant_id: str, plugin_installation_id: str) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/uninstall",
            bool,
            data={"plugin_installation_id": plugin_installation_id},
            headers={"Content-Type": "application/json"},
        )

    def fetch_tool_providers(self, tenant_id: str) -> list[PluginToolProviderEntity]:
        def transformer(body: dict) -> dict:
            # Dify stamps each tool with its provider's name before validation.
            for provider in body.get("data") or []:
                declaration = provider.get("declaration", {}) or {}
                name = declaration.get("identity", {}).get("name")
                for tool in declaration.get("tools", []):
                    tool["identity"]["provider"] = name
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/tools",
            list[PluginToolProviderEntity],
            params={"page": 1, "page_size": 256},
            transformer=transformer,
        )

    def fetch_tool_provider(self, tenant_id: str, plugin_id: str, provider: str) -> PluginToolProviderEntity:
        def transformer(body: dict) -> dict:
            data = body.get("data")
            if data:
                for tool in data.get("declaration", {}).get("tools", []):
                    tool["identity"]["provider"] = provider
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/tool",
            PluginToolProviderEntity,
            params={"provider": provider, "plugin_id": plugin_id},
            transformer=transformer,
        )

    def fetch_model_providers(self, tenant_id: str) -> list[PluginModelProviderEntity]:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/models",
            list[PluginModelProviderEntity],
            params={"page": 1, "page_size": 256},
        )

    def delete_endpoint(self, tenant_id: str, user_id: str, endpoint_id: str) -> bool:
        """Dify's `PluginEndpointClient.delete_endpoint`: idempotent on the
        reference's internal error for a record that is gone."""
        try:
            return self.request_with_response(
                "POST",
                f"plugin/{tenant_id}/endpoint/remove",
                bool,
                data={"endpoint_id": endpoint_id},
                headers={"Content-Type": "application/json"},
            )
        except PluginDaemonInternalServerError as e:
            if "record not found" in str(e.description).lower():
                return True
            raise

    # --- dispatch calls ----------------------------------------------------------------------

    def invoke_tool(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, tool: str, parameters: dict, credentials: dict
    ) -> Iterator[ToolInvokeMessage]:
        return self.request_with_response_stream(
            "POST",
            f"plugin/{tenant_id}/dispatch/tool/invoke",
            ToolInvokeMessage,
            data={
                "user_id": user_id,
                "conversation_id": None,
                "app_id": None,
                "message_id": None,
                "data": {
                    "provider": provider,
                    "tool": tool,
                    "credentials": credentials,
                    "credential_type": "api-key",
                    "tool_parameters": parameters,
                },
            },
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        )

    def start_llm_polling(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, model: str, credentials: dict, text: str
    ) -> LLMPollingResult:
        """`model/polling/start`. The reference answers the polling routes with
        one non-stream envelope (`service/model_polling.go`), parsed here as
        Dify parses every non-stream envelope."""
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/dispatch/model/polling/start",
            LLMPollingResult,
            data={
                "user_id": user_id,
                "data": {
                    "provider": provider,
                    "model_type": "llm",
                    "model": model,
                    "credentials": credentials,
                    "prompt_messages": [{"role": "user", "content": text}],
                    "model_parameters": {},
                    "tools": [],
                    "stop": [],
                    "stream": False,
                },
            },
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        )

    def check_llm_polling(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, model: str, credentials: dict, state: dict
    ) -> LLMPollingResult:
        """`model/polling/check`, parsed as `start_llm_polling`."""
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/dispatch/model/polling/check",
            LLMPollingResult,
            data={
                "user_id": user_id,
                "data": {
                    "provider": provider,
                    "model_type": "llm",
                    "model": model,
                    "credentials": credentials,
                    "plugin_state": state,
                },
            },
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        )

    def validate_tool_credentials(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, credentials: dict
    ) -> bool:
        for resp in self.request_with_response_stream(
            "POST",
            f"plugin/{tenant_id}/dispatch/tool/validate_credentials",
            PluginBasicBooleanResponse,
            data={"user_id": user_id, "data": {"provider": provider, "credentials": credentials}},
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        ):
            return resp.result
        return False
