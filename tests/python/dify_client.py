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
from decimal import Decimal
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


# Shared schema pieces: Dify's `core/entities/provider_entities.py` (ProviderConfig),
# `core/plugin/entities/parameters.py` and `oauth.py`.


class ProviderConfigType(StrEnum):
    SecretInput = "secret-input"
    TextInput = "text-input"
    Select = "select"
    Boolean = "boolean"
    AppSelector = "app-selector"
    ModelSelector = "model-selector"
    ToolsSelector = "tools-selector"


class ProviderConfigOption(BaseModel):
    value: str
    label: I18nObject


class ProviderConfig(BaseModel):
    type: ProviderConfigType
    name: str
    scope: str | None = None
    required: bool = False
    default: int | str | float | bool | None = None
    options: list[ProviderConfigOption] | None = None
    multiple: bool | None = False
    label: I18nObject | None = None
    help: I18nObject | None = None
    url: str | None = None
    placeholder: I18nObject | None = None


class OAuthSchema(BaseModel):
    # Lists, not optional: `null` here is a validation error in Dify.
    client_schema: list[ProviderConfig] = Field(default_factory=list)
    credentials_schema: list[ProviderConfig] = Field(default_factory=list)


class ParameterOption(BaseModel):
    value: str
    label: I18nObject
    icon: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _value_as_text(cls, v):
        # Dify turns numeric option values into strings.
        return v if isinstance(v, str) else str(v)


class ParameterAutoGenerate(BaseModel):
    class Type(StrEnum):
        PromptInstruction = "prompt_instruction"

    type: Type


class ParameterTemplate(BaseModel):
    enabled: bool = False


class PluginParameter(BaseModel):
    name: str
    label: I18nObject
    placeholder: I18nObject | None = None
    scope: str | None = None
    auto_generate: ParameterAutoGenerate | None = None
    template: ParameterTemplate | None = None
    required: bool = False
    default: float | int | str | bool | list | dict | None = None
    min: float | int | None = None
    max: float | int | None = None
    precision: int | None = None
    options: list[ParameterOption] = Field(default_factory=list)

    @field_validator("options", mode="before")
    @classmethod
    def _options_list(cls, v):
        # Dify reads anything but a list (null included) as no options.
        return v if isinstance(v, list) else []


# Tools: Dify's `core/tools/entities/tool_entities.py`.


class ToolLabel(StrEnum):
    Search = "search"
    Image = "image"
    Videos = "videos"
    Weather = "weather"
    Finance = "finance"
    Design = "design"
    Travel = "travel"
    Social = "social"
    News = "news"
    Medical = "medical"
    Productivity = "productivity"
    Education = "education"
    Business = "business"
    Entertainment = "entertainment"
    Utilities = "utilities"
    Rag = "rag"
    Other = "other"


class ToolParameter(PluginParameter):
    class Type(StrEnum):
        String = "string"
        Number = "number"
        Boolean = "boolean"
        Select = "select"
        SecretInput = "secret-input"
        File = "file"
        Files = "files"
        Checkbox = "checkbox"
        AppSelector = "app-selector"
        ModelSelector = "model-selector"
        Any = "any"
        DynamicSelect = "dynamic-select"
        Array = "array"
        Object = "object"
        SystemFiles = "system-files"

    class Form(StrEnum):
        Schema = "schema"
        Form = "form"
        Llm = "llm"

    type: Type
    human_description: I18nObject | None = None
    form: Form
    llm_description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolIdentity(BaseModel):
    author: str
    name: str
    label: I18nObject
    # Required: Dify's client stamps it before validating (see fetch_tool_providers).
    provider: str
    icon: str | None = None


class ToolDescription(BaseModel):
    human: I18nObject
    llm: str


class ToolEntity(BaseModel):
    identity: ToolIdentity
    parameters: list[ToolParameter] = Field(default_factory=list)
    description: ToolDescription | None = None
    output_schema: Mapping[str, Any] = Field(default_factory=dict)
    has_runtime_parameters: bool = False

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, v):
        return v or []

    @field_validator("output_schema", mode="before")
    @classmethod
    def _output_schema(cls, v):
        return v or {}


class ToolProviderIdentity(BaseModel):
    author: str
    name: str
    description: I18nObject
    icon: str
    icon_dark: str | None = None
    label: I18nObject
    tags: list[ToolLabel] | None = Field(default_factory=list)


class ToolProviderEntity(BaseModel):
    identity: ToolProviderIdentity
    plugin_id: str | None = None
    credentials_schema: list[ProviderConfig] = Field(default_factory=list)
    oauth_schema: OAuthSchema | None = None


class ToolProviderEntityWithPlugin(ToolProviderEntity):
    tools: list[ToolEntity] = Field(default_factory=list)


# Models: graphon's `model_runtime/entities/model_entities.py` and `provider_entities.py`
# (graphon 0.3, the version Dify 1.14 pins).


class ModelType(StrEnum):
    Llm = "llm"
    TextEmbedding = "text-embedding"
    Rerank = "rerank"
    Speech2text = "speech2text"
    Moderation = "moderation"
    Tts = "tts"


class FetchFrom(StrEnum):
    PredefinedModel = "predefined-model"
    CustomizableModel = "customizable-model"


class ModelFeature(StrEnum):
    ToolCall = "tool-call"
    MultiToolCall = "multi-tool-call"
    AgentThought = "agent-thought"
    Vision = "vision"
    StreamToolCall = "stream-tool-call"
    Document = "document"
    Video = "video"
    Audio = "audio"
    StructuredOutput = "structured-output"
    # Declared by models that answer dispatch/model/polling (SDK 0.10's
    # ModelFeature.POLLING), which the Dify versions that poll accept.
    Polling = "polling"


class ParameterType(StrEnum):
    Float = "float"
    Int = "int"
    String = "string"
    Boolean = "boolean"
    Text = "text"


class ModelPropertyKey(StrEnum):
    Mode = "mode"
    ContextSize = "context_size"
    MaxChunks = "max_chunks"
    FileUploadLimit = "file_upload_limit"
    SupportedFileExtensions = "supported_file_extensions"
    MaxCharactersPerChunk = "max_characters_per_chunk"
    DefaultVoice = "default_voice"
    Voices = "voices"
    WordLimit = "word_limit"
    AudioType = "audio_type"
    MaxWorkers = "max_workers"


class ParameterRule(BaseModel):
    name: str
    use_template: str | None = None
    label: I18nObject
    type: ParameterType
    help: I18nObject | None = None
    required: bool = False
    default: Any | None = None
    min: float | None = None
    max: float | None = None
    precision: int | None = None
    options: list[str] = Field(default_factory=list)


class PriceConfig(BaseModel):
    input: Decimal
    output: Decimal | None = None
    unit: Decimal
    currency: str


class AIModelEntity(BaseModel):
    model: str
    label: I18nObject
    model_type: ModelType
    features: list[ModelFeature] | None = None
    fetch_from: FetchFrom
    # A dict, not optional.
    model_properties: dict[ModelPropertyKey, Any]
    deprecated: bool = False
    parameter_rules: list[ParameterRule] = Field(default_factory=list)
    pricing: PriceConfig | None = None

    model_config = ConfigDict(protected_namespaces=())


class FormType(StrEnum):
    TextInput = "text-input"
    SecretInput = "secret-input"
    Select = "select"
    Radio = "radio"
    Switch = "switch"


class FormShowOnObject(BaseModel):
    variable: str
    value: str


class FormOption(BaseModel):
    label: I18nObject
    value: str
    # A list with a default: absent is fine, `null` is a validation error.
    show_on: list[FormShowOnObject] = Field(default_factory=list)


class CredentialFormSchema(BaseModel):
    variable: str
    label: I18nObject
    type: FormType
    required: bool = True
    default: str | None = None
    options: list[FormOption] | None = None
    placeholder: I18nObject | None = None
    max_length: int = 0
    show_on: list[FormShowOnObject] = Field(default_factory=list)


class ProviderCredentialSchema(BaseModel):
    credential_form_schemas: list[CredentialFormSchema]


class FieldModelSchema(BaseModel):
    label: I18nObject
    placeholder: I18nObject | None = None


class ModelCredentialSchema(BaseModel):
    model: FieldModelSchema
    credential_form_schemas: list[CredentialFormSchema]


class ProviderHelpEntity(BaseModel):
    title: I18nObject
    url: I18nObject


class ConfigurateMethod(StrEnum):
    PredefinedModel = "predefined-model"
    CustomizableModel = "customizable-model"


class ProviderEntity(BaseModel):
    provider: str
    provider_name: str = ""
    label: I18nObject
    description: I18nObject | None = None
    icon_small: I18nObject | None = None
    icon_small_dark: I18nObject | None = None
    background: str | None = None
    help: ProviderHelpEntity | None = None
    supported_model_types: list[ModelType]
    configurate_methods: list[ConfigurateMethod]
    models: list[AIModelEntity] = Field(default_factory=list)
    provider_credential_schema: ProviderCredentialSchema | None = None
    model_credential_schema: ModelCredentialSchema | None = None
    position: dict[str, list[str]] | None = Field(default_factory=dict)

    model_config = ConfigDict(protected_namespaces=())

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v):
        return v or []


# Agent strategies: Dify's `core/agent/plugin_entities.py`.


class AgentStrategyParameter(PluginParameter):
    class Type(StrEnum):
        String = "string"
        Number = "number"
        Boolean = "boolean"
        Select = "select"
        SecretInput = "secret-input"
        File = "file"
        Files = "files"
        AppSelector = "app-selector"
        ModelSelector = "model-selector"
        ToolsSelector = "array[tools]"
        Any = "any"
        SystemFiles = "system-files"

    type: Type
    help: I18nObject | None = None


class AgentFeature(StrEnum):
    HistoryMessages = "history-messages"


class AgentStrategyEntity(BaseModel):
    identity: ToolIdentity
    parameters: list[AgentStrategyParameter] = Field(default_factory=list)
    description: I18nObject
    output_schema: dict[str, Any] | None = None
    features: list[AgentFeature] | None = None
    meta_version: str | None = None

    model_config = ConfigDict(protected_namespaces=())

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, v):
        return v or []


class AgentStrategyProviderEntity(BaseModel):
    identity: ToolProviderIdentity
    plugin_id: str | None = None


class AgentProviderEntityWithPlugin(AgentStrategyProviderEntity):
    strategies: list[AgentStrategyEntity] = Field(default_factory=list)


# Endpoints: Dify's `core/plugin/entities/endpoint.py`.


class EndpointDeclaration(BaseModel):
    path: str
    method: str
    hidden: bool = False


class EndpointProviderDeclaration(BaseModel):
    # A list, not optional.
    settings: list[ProviderConfig] = Field(default_factory=list)
    endpoints: list[EndpointDeclaration] | None = Field(default_factory=list)


# Datasources: Dify's `core/datasource/entities/datasource_entities.py`.


class DatasourceProviderType(StrEnum):
    OnlineDocument = "online_document"
    LocalFile = "local_file"
    WebsiteCrawl = "website_crawl"
    OnlineDrive = "online_drive"


class DatasourceProviderIdentity(BaseModel):
    author: str
    name: str
    description: I18nObject
    icon: str
    label: I18nObject
    tags: list[ToolLabel] | None = Field(default_factory=list)


class DatasourceProviderEntity(BaseModel):
    identity: DatasourceProviderIdentity
    credentials_schema: list[ProviderConfig] = Field(default_factory=list)
    oauth_schema: OAuthSchema | None = None
    provider_type: DatasourceProviderType


class DatasourceParameter(PluginParameter):
    class Type(StrEnum):
        String = "string"
        Number = "number"
        Boolean = "boolean"
        Select = "select"
        SecretInput = "secret-input"
        File = "file"
        Files = "files"
        SystemFiles = "system-files"

    type: Type
    description: I18nObject


class DatasourceIdentity(BaseModel):
    author: str
    name: str
    label: I18nObject
    # Required: Dify's client stamps it before validating.
    provider: str
    icon: str | None = None


class DatasourceEntity(BaseModel):
    identity: DatasourceIdentity
    parameters: list[DatasourceParameter] = Field(default_factory=list)
    description: I18nObject
    output_schema: dict[str, Any] | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, v):
        return v or []


class DatasourceProviderEntityWithPlugin(DatasourceProviderEntity):
    datasources: list[DatasourceEntity] = Field(default_factory=list)


# Triggers: Dify's `core/trigger/entities/entities.py`.


class EventParameter(BaseModel):
    class Type(StrEnum):
        String = "string"
        Number = "number"
        Boolean = "boolean"
        Select = "select"
        File = "file"
        Files = "files"
        ModelSelector = "model-selector"
        AppSelector = "app-selector"
        Object = "object"
        Array = "array"
        DynamicSelect = "dynamic-select"
        Checkbox = "checkbox"

    name: str
    label: I18nObject
    type: Type
    auto_generate: ParameterAutoGenerate | None = None
    template: ParameterTemplate | None = None
    scope: str | None = None
    required: bool | None = False
    multiple: bool | None = False
    default: int | float | str | list[Any] | None = None
    min: float | int | None = None
    max: float | int | None = None
    precision: int | None = None
    options: list[ParameterOption] | None = None
    description: I18nObject | None = None


class TriggerProviderIdentity(BaseModel):
    author: str
    name: str
    label: I18nObject
    description: I18nObject
    icon: str | None = None
    icon_dark: str | None = None
    tags: list[str] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v):
        return v or []


class EventIdentity(BaseModel):
    author: str
    name: str
    label: I18nObject
    provider: str | None = None


class EventEntity(BaseModel):
    identity: EventIdentity
    parameters: list[EventParameter] = Field(default_factory=list)
    description: I18nObject
    output_schema: Mapping[str, Any] | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, v):
        return v or []


class SubscriptionConstructor(BaseModel):
    parameters: list[EventParameter] = Field(default_factory=list)
    credentials_schema: list[ProviderConfig] = Field(default_factory=list)
    oauth_schema: OAuthSchema | None = None


class TriggerProviderEntity(BaseModel):
    identity: TriggerProviderIdentity
    subscription_schema: list[ProviderConfig] = Field(default_factory=list)
    subscription_constructor: SubscriptionConstructor | None = None
    events: list[EventEntity] = Field(default_factory=list)


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

        @field_validator("minimum_dify_version")
        @classmethod
        def _minimum(cls, v: str | None) -> str | None:
            from packaging.version import Version

            if v is not None:
                Version(v)
            return v

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
    datasource: DatasourceProviderEntity | None = None
    trigger: TriggerProviderEntity | None = None
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


class AgentInvokeMessage(ToolInvokeMessage):
    pass


class PluginReadmeResponse(BaseModel):
    content: str
    language: str


class MissingPluginDependency(BaseModel):
    plugin_unique_identifier: str
    current_identifier: str | None = None


class PluginAgentProviderEntity(BaseModel):
    provider: str
    plugin_unique_identifier: str
    plugin_id: str
    declaration: AgentProviderEntityWithPlugin
    meta: PluginDeclaration.Meta


class PluginModelSchemaEntity(BaseModel):
    model_schema: AIModelEntity

    model_config = ConfigDict(protected_namespaces=())


class PluginLLMNumTokensResponse(BaseModel):
    num_tokens: int


class LLMUsage(BaseModel):
    prompt_tokens: int
    prompt_unit_price: Decimal
    prompt_price_unit: Decimal
    prompt_price: Decimal
    completion_tokens: int
    completion_unit_price: Decimal
    completion_price_unit: Decimal
    completion_price: Decimal
    total_tokens: int
    total_price: Decimal
    currency: str
    latency: float
    time_to_first_token: float | None = None
    time_to_generate: float | None = None


class AssistantPromptMessage(BaseModel):
    role: str = "assistant"
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class LLMResultChunkDelta(BaseModel):
    index: int
    message: AssistantPromptMessage
    usage: LLMUsage | None = None
    finish_reason: str | None = None


class LLMResultChunk(BaseModel):
    model: str
    prompt_messages: list[dict[str, Any]] = Field(default_factory=list)
    system_fingerprint: str | None = None
    delta: LLMResultChunkDelta


class EndpointEntityWithInstance(BasePluginEntity):
    settings: dict[str, Any]
    tenant_id: str
    plugin_id: str
    expired_at: datetime.datetime
    declaration: EndpointProviderDeclaration = Field(default_factory=EndpointProviderDeclaration)
    name: str
    enabled: bool
    url: str
    hook_id: str

    @model_validator(mode="before")
    @classmethod
    def _url(cls, values):
        # Dify renders `url` from its ENDPOINT_URL_TEMPLATE when the daemon sends none.
        if isinstance(values, dict) and "url" not in values:
            values["url"] = ENDPOINT_URL_TEMPLATE.replace("{hook_id}", values["hook_id"])
        return values


class DebuggingKey(BaseModel):
    key: str


class PluginDatasourceProviderEntity(BaseModel):
    provider: str
    plugin_unique_identifier: str
    plugin_id: str
    is_authorized: bool = False
    declaration: DatasourceProviderEntityWithPlugin


class PluginTriggerProviderEntity(BaseModel):
    provider: str
    plugin_unique_identifier: str
    plugin_id: str
    declaration: TriggerProviderEntity


class EmbeddingUsage(BaseModel):
    tokens: int
    total_tokens: int
    unit_price: Decimal
    price_unit: Decimal
    total_price: Decimal
    currency: str
    latency: float


class EmbeddingResult(BaseModel):
    model: str
    embeddings: list[list[float]]
    usage: EmbeddingUsage


class PluginTextEmbeddingNumTokensResponse(BaseModel):
    num_tokens: list[int]


class PluginOAuthAuthorizationUrlResponse(BaseModel):
    authorization_url: str


class PluginOAuthCredentialsResponse(BaseModel):
    metadata: Mapping[str, Any] = Field(default_factory=dict)
    expires_at: int = -1
    credentials: Mapping[str, Any]


class PluginDynamicSelectOptionsResponse(BaseModel):
    options: list[ParameterOption]


# Dify's default ENDPOINT_URL_TEMPLATE.
ENDPOINT_URL_TEMPLATE = "http://localhost:5002/e/{hook_id}"


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
        # Dify 1.14 sends the identifier in the query, under two names (the
        # second for daemons up to 0.5.4); older Dify sent a GET with a JSON body.
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/decode/from_identifier",
            PluginDecodeResponse,
            params={"plugin_unique_identifier": identifier, "PluginUniqueIdentifier": identifier},
        )

    def fetch_plugin_readme(self, tenant_id: str, identifier: str, language: str) -> str:
        # Dify turns a client-side error naming 404 into "no readme".
        try:
            readme = self.request_with_response(
                "GET",
                f"plugin/{tenant_id}/management/fetch/readme",
                PluginReadmeResponse,
                params={"tenant_id": tenant_id, "plugin_unique_identifier": identifier, "language": language},
            )
        except PluginDaemonClientSideError as e:
            if "404" in e.description:
                return ""
            raise
        return readme.content

    def list_plugins(self, tenant_id: str) -> list[PluginEntity]:
        return self.list_plugins_with_total(tenant_id, 1, 256).list

    def delete_plugin_installation_task(self, tenant_id: str, task_id: str) -> bool:
        return self.request_with_response("POST", f"plugin/{tenant_id}/management/install/tasks/{task_id}/delete", bool)

    def delete_all_plugin_installation_task_items(self, tenant_id: str) -> bool:
        return self.request_with_response("POST", f"plugin/{tenant_id}/management/install/tasks/delete_all", bool)

    def delete_plugin_installation_task_item(self, tenant_id: str, task_id: str, identifier: str) -> bool:
        return self.request_with_response(
            "POST", f"plugin/{tenant_id}/management/install/tasks/{task_id}/delete/{identifier}", bool
        )

    def fetch_missing_dependencies(self, tenant_id: str, identifiers: list[str]) -> list[MissingPluginDependency]:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/installation/missing",
            list[MissingPluginDependency],
            data={"plugin_unique_identifiers": identifiers},
            headers={"Content-Type": "application/json"},
        )

    def upgrade_plugin(
        self, tenant_id: str, original: str, new: str, source: str = "package", meta: dict | None = None
    ) -> PluginInstallTaskStartResponse:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/install/upgrade",
            PluginInstallTaskStartResponse,
            data={
                "original_plugin_unique_identifier": original,
                "new_plugin_unique_identifier": new,
                "source": source,
                "meta": meta or {},
            },
            headers={"Content-Type": "application/json"},
        )

    def check_tools_existence(self, tenant_id: str, provider_ids: list[tuple[str, str]]) -> list[bool]:
        """`provider_ids` are `(plugin_id, provider_name)` pairs."""
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/management/tools/check_existence",
            list[bool],
            data={"provider_ids": [{"plugin_id": p, "provider_name": n} for p, n in provider_ids]},
            headers={"Content-Type": "application/json"},
        )

    def get_debugging_key(self, tenant_id: str) -> str:
        return self.request_with_response("POST", f"plugin/{tenant_id}/debugging/key", DebuggingKey).key

    # --- agent strategies (Dify's PluginAgentClient) ------------------------------------------

    def fetch_agent_strategy_providers(self, tenant_id: str) -> list[PluginAgentProviderEntity]:
        def transformer(body: dict) -> dict:
            for provider in body.get("data", []):
                declaration = provider.get("declaration", {}) or {}
                name = declaration.get("identity", {}).get("name")
                for strategy in declaration.get("strategies", []):
                    strategy["identity"]["provider"] = name
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/agent_strategies",
            list[PluginAgentProviderEntity],
            params={"page": 1, "page_size": 256},
            transformer=transformer,
        )

    def fetch_agent_strategy_provider(self, tenant_id: str, plugin_id: str, provider: str) -> PluginAgentProviderEntity:
        def transformer(body: dict) -> dict:
            if body.get("data") is None or body.get("data", {}).get("declaration") is None:
                return body
            for strategy in body["data"]["declaration"].get("strategies", []):
                strategy["identity"]["provider"] = provider
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/agent_strategy",
            PluginAgentProviderEntity,
            params={"provider": provider, "plugin_id": plugin_id},
            transformer=transformer,
        )

    def invoke_agent_strategy(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, strategy: str, params: dict
    ) -> Iterator[AgentInvokeMessage]:
        return self.request_with_response_stream(
            "POST",
            f"plugin/{tenant_id}/dispatch/agent_strategy/invoke",
            AgentInvokeMessage,
            data={
                "user_id": user_id,
                "conversation_id": None,
                "app_id": None,
                "message_id": None,
                "context": {},
                "data": {
                    "agent_strategy_provider": provider,
                    "agent_strategy": strategy,
                    "agent_strategy_params": params,
                },
            },
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        )

    # --- endpoints (Dify's PluginEndpointClient) ----------------------------------------------

    def create_endpoint(self, tenant_id: str, user_id: str, identifier: str, name: str, settings: dict) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/endpoint/setup",
            bool,
            headers={"Content-Type": "application/json"},
            data={"user_id": user_id, "plugin_unique_identifier": identifier, "settings": settings, "name": name},
        )

    # Dify passes the console's page size; the daemon takes at most 100.
    def list_endpoints(self, tenant_id: str, page: int = 1, page_size: int = 100) -> list[EndpointEntityWithInstance]:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/endpoint/list",
            list[EndpointEntityWithInstance],
            params={"page": page, "page_size": page_size},
        )

    def list_endpoints_for_single_plugin(
        self, tenant_id: str, plugin_id: str, page: int = 1, page_size: int = 100
    ) -> list[EndpointEntityWithInstance]:
        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/endpoint/list/plugin",
            list[EndpointEntityWithInstance],
            params={"plugin_id": plugin_id, "page": page, "page_size": page_size},
        )

    def update_endpoint(self, tenant_id: str, user_id: str, endpoint_id: str, name: str, settings: dict) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/endpoint/update",
            bool,
            data={"user_id": user_id, "endpoint_id": endpoint_id, "name": name, "settings": settings},
            headers={"Content-Type": "application/json"},
        )

    def enable_endpoint(self, tenant_id: str, endpoint_id: str) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/endpoint/enable",
            bool,
            data={"endpoint_id": endpoint_id},
            headers={"Content-Type": "application/json"},
        )

    def disable_endpoint(self, tenant_id: str, endpoint_id: str) -> bool:
        return self.request_with_response(
            "POST",
            f"plugin/{tenant_id}/endpoint/disable",
            bool,
            data={"endpoint_id": endpoint_id},
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

    # --- models (Dify's PluginModelClient) ------------------------------------------------------

    @staticmethod
    def _model_payload(user_id: str | None, data: dict) -> dict:
        # Dify leaves `user_id` out of the body when it has none.
        payload: dict[str, Any] = {"data": data}
        if user_id is not None:
            payload["user_id"] = user_id
        return payload

    def _model_stream(self, tenant_id: str, route: str, type_: Any, plugin_id: str, user_id: str | None, data: dict):
        return self.request_with_response_stream(
            "POST",
            f"plugin/{tenant_id}/dispatch/{route}",
            type_,
            data=self._model_payload(user_id, data),
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        )

    def get_model_schema(
        self, tenant_id: str, user_id: str | None, plugin_id: str, provider: str, model_type: str, model: str, credentials: dict
    ) -> AIModelEntity | None:
        data = {"provider": provider, "model_type": model_type, "model": model, "credentials": credentials}
        for resp in self._model_stream(tenant_id, "model/schema", PluginModelSchemaEntity, plugin_id, user_id, data):
            return resp.model_schema
        return None

    def validate_provider_credentials(
        self, tenant_id: str, user_id: str | None, plugin_id: str, provider: str, credentials: dict
    ) -> bool:
        data = {"provider": provider, "credentials": credentials}
        route = "model/validate_provider_credentials"
        for resp in self._model_stream(tenant_id, route, PluginBasicBooleanResponse, plugin_id, user_id, data):
            if resp.credentials and isinstance(resp.credentials, dict):
                credentials.update(resp.credentials)
            return resp.result
        return False

    def validate_model_credentials(
        self, tenant_id: str, user_id: str | None, plugin_id: str, provider: str, model_type: str, model: str, credentials: dict
    ) -> bool:
        data = {"provider": provider, "model_type": model_type, "model": model, "credentials": credentials}
        route = "model/validate_model_credentials"
        for resp in self._model_stream(tenant_id, route, PluginBasicBooleanResponse, plugin_id, user_id, data):
            if resp.credentials and isinstance(resp.credentials, dict):
                credentials.update(resp.credentials)
            return resp.result
        return False

    def invoke_llm(
        self,
        tenant_id: str,
        user_id: str | None,
        plugin_id: str,
        provider: str,
        model: str,
        credentials: dict,
        prompt_messages: list[dict],
        model_parameters: dict | None = None,
        tools: list[dict] | None = None,
        stop: list[str] | None = None,
        stream: bool = True,
    ) -> Iterator[LLMResultChunk]:
        data = {
            "provider": provider,
            "model_type": "llm",
            "model": model,
            "credentials": credentials,
            "prompt_messages": prompt_messages,
            "model_parameters": model_parameters,
            "tools": tools,
            "stop": stop,
            "stream": stream,
        }
        try:
            yield from self._model_stream(tenant_id, "llm/invoke", LLMResultChunk, plugin_id, user_id, data)
        except PluginDaemonInnerError as e:
            raise ValueError(e.message + str(e.code)) from e

    def get_llm_num_tokens(
        self,
        tenant_id: str,
        user_id: str | None,
        plugin_id: str,
        provider: str,
        model: str,
        credentials: dict,
        prompt_messages: list[dict],
        tools: list[dict] | None = None,
    ) -> int:
        data = {
            "provider": provider,
            "model_type": "llm",
            "model": model,
            "credentials": credentials,
            "prompt_messages": prompt_messages,
            "tools": tools,
        }
        for resp in self._model_stream(tenant_id, "llm/num_tokens", PluginLLMNumTokensResponse, plugin_id, user_id, data):
            return resp.num_tokens
        return 0

    def invoke_text_embedding(
        self, tenant_id: str, user_id: str | None, plugin_id: str, provider: str, model: str, credentials: dict,
        texts: list[str], input_type: str,
    ) -> EmbeddingResult:
        data = {
            "provider": provider,
            "model_type": "text-embedding",
            "model": model,
            "credentials": credentials,
            "texts": texts,
            "input_type": input_type,
        }
        for resp in self._model_stream(tenant_id, "text_embedding/invoke", EmbeddingResult, plugin_id, user_id, data):
            return resp
        raise ValueError("Failed to invoke text embedding")

    def get_text_embedding_num_tokens(
        self, tenant_id: str, user_id: str | None, plugin_id: str, provider: str, model: str, credentials: dict,
        texts: list[str],
    ) -> list[int]:
        data = {"provider": provider, "model_type": "text-embedding", "model": model, "credentials": credentials, "texts": texts}
        route = "text_embedding/num_tokens"
        for resp in self._model_stream(tenant_id, route, PluginTextEmbeddingNumTokensResponse, plugin_id, user_id, data):
            return resp.num_tokens
        return []

    # --- assets (Dify's PluginAssetManager) ----------------------------------------------------

    def fetch_asset(self, tenant_id: str, asset_id: str) -> bytes:
        response = self.request("GET", f"plugin/{tenant_id}/asset/{asset_id}")
        if response.status_code != 200:
            raise ValueError(f"can not found asset {asset_id}")
        return response.content

    # --- datasources and triggers: the listings (Dify's PluginDatasourceManager, PluginTriggerClient)

    def fetch_installed_datasource_providers(self, tenant_id: str) -> list[PluginDatasourceProviderEntity]:
        def transformer(body: dict) -> dict:
            for provider in body.get("data") or []:
                declaration = provider.get("declaration", {}) or {}
                name = declaration.get("identity", {}).get("name")
                for datasource in declaration.get("datasources", []):
                    datasource["identity"]["provider"] = name
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/datasources",
            list[PluginDatasourceProviderEntity],
            params={"page": 1, "page_size": 256},
            transformer=transformer,
        )

    def fetch_datasource_provider(self, tenant_id: str, plugin_id: str, provider: str) -> PluginDatasourceProviderEntity:
        def transformer(body: dict) -> dict:
            data = body.get("data")
            if data:
                for datasource in data.get("declaration", {}).get("datasources", []):
                    datasource["identity"]["provider"] = provider
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/datasource",
            PluginDatasourceProviderEntity,
            params={"provider": provider, "plugin_id": plugin_id},
            transformer=transformer,
        )

    def fetch_trigger_providers(self, tenant_id: str) -> list[PluginTriggerProviderEntity]:
        def transformer(body: dict) -> dict:
            for provider in body.get("data", []):
                declaration = provider.get("declaration", {}) or {}
                for event in declaration.get("events", []):
                    event["identity"]["provider"] = provider.get("plugin_id") + "/" + provider.get("provider")
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/triggers",
            list[PluginTriggerProviderEntity],
            params={"page": 1, "page_size": 256},
            transformer=transformer,
        )

    def fetch_trigger_provider(self, tenant_id: str, plugin_id: str, provider: str) -> PluginTriggerProviderEntity:
        def transformer(body: dict) -> dict:
            data = body.get("data")
            if data:
                for event in data.get("declaration", {}).get("events", []):
                    event["identity"]["provider"] = f"{plugin_id}/{provider}"
            return body

        return self.request_with_response(
            "GET",
            f"plugin/{tenant_id}/management/trigger",
            PluginTriggerProviderEntity,
            params={"provider": provider, "plugin_id": plugin_id},
            transformer=transformer,
        )

    # --- OAuth and dynamic select (Dify's OAuthHandler, DynamicSelectClient) -------------------

    def _first(self, tenant_id: str, route: str, type_: Any, plugin_id: str, user_id: str, data: dict):
        for resp in self.request_with_response_stream(
            "POST",
            f"plugin/{tenant_id}/dispatch/{route}",
            type_,
            data={"user_id": user_id, "data": data},
            headers={"X-Plugin-ID": plugin_id, "Content-Type": "application/json"},
        ):
            return resp
        raise ValueError(f"no response from the plugin daemon for {route}")

    def get_authorization_url(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, redirect_uri: str, system_credentials: dict
    ) -> PluginOAuthAuthorizationUrlResponse:
        data = {"provider": provider, "redirect_uri": redirect_uri, "system_credentials": system_credentials}
        route = "oauth/get_authorization_url"
        return self._first(tenant_id, route, PluginOAuthAuthorizationUrlResponse, plugin_id, user_id, data)

    def get_oauth_credentials(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, redirect_uri: str, system_credentials: dict,
        raw_request: bytes,
    ) -> PluginOAuthCredentialsResponse:
        data = {
            "provider": provider,
            "redirect_uri": redirect_uri,
            "system_credentials": system_credentials,
            "raw_http_request": raw_request.hex(),
        }
        return self._first(tenant_id, "oauth/get_credentials", PluginOAuthCredentialsResponse, plugin_id, user_id, data)

    def refresh_oauth_credentials(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, redirect_uri: str, system_credentials: dict,
        credentials: dict,
    ) -> PluginOAuthCredentialsResponse:
        data = {
            "provider": provider,
            "redirect_uri": redirect_uri,
            "system_credentials": system_credentials,
            "credentials": credentials,
        }
        route = "oauth/refresh_credentials"
        return self._first(tenant_id, route, PluginOAuthCredentialsResponse, plugin_id, user_id, data)

    def fetch_dynamic_select_options(
        self, tenant_id: str, user_id: str, plugin_id: str, provider: str, action: str, credentials: dict,
        credential_type: str, parameter: str,
    ) -> PluginDynamicSelectOptionsResponse:
        data = {
            "provider": provider,
            "credentials": credentials,
            "credential_type": credential_type,
            "provider_action": action,
            "parameter": parameter,
        }
        route = "dynamic_select/fetch_parameter_options"
        return self._first(tenant_id, route, PluginDynamicSelectOptionsResponse, plugin_id, user_id, data)
