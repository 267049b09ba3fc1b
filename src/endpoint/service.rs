//! Endpoint management: setting endpoints up, listing, updating, enabling,
//! disabling and removing them, with settings checked against the endpoint
//! group's declaration and secrets encrypted by Dify (`invoke/encrypt`,
//! namespace `endpoint`, identity = the endpoint id) before they are stored
//! (reference: `internal/service/setup_endpoint.go`, `service/endpoint.go`).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::config;
use super::hook::new_hook_id;
use super::EndpointError;
use crate::backwards::{EncryptOpt, EncryptRequest, InnerApiClient, Permission};
use crate::store::{EndpointRecord, Installation, NewEndpoint, Store};

/// The encryption namespace of endpoint settings.
const NAMESPACE: &str = "endpoint";

/// Largest page a listing serves, as the reference's validator allows.
pub const MAX_PAGE_SIZE: i64 = 100;

/// What a plugin declares about its endpoints, read from its declaration.
#[derive(Debug, Clone)]
pub struct EndpointDeclaration {
    /// The `endpoint` object of the declaration, shown as is in listings.
    pub raw: Value,
    /// The declared settings fields.
    pub settings: Vec<Value>,
}

impl EndpointDeclaration {
    /// The endpoint group of a plugin declaration, if it has one.
    pub fn from_plugin_declaration(declaration: &Value) -> Option<Self> {
        let raw = declaration
            .get("endpoint")
            .filter(|v| v.is_object())?
            .clone();
        let settings = raw
            .get("settings")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Some(Self { raw, settings })
    }

    /// The empty group listings show for an endpoint whose plugin is gone.
    fn empty() -> Value {
        serde_json::json!({"settings": [], "endpoints": [], "endpoint_files": []})
    }
}

/// Endpoint management over the store and Dify's encryption service.
#[derive(Clone)]
pub struct EndpointService {
    store: Store,
    inner: Arc<InnerApiClient>,
}

impl EndpointService {
    pub fn new(store: Store, inner: Arc<InnerApiClient>) -> Self {
        Self { store, inner }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The whole declaration of an installed package: the stored one, or a
    /// debugging plugin's remote declaration.
    pub async fn plugin_declaration(&self, identifier: &str) -> Result<Value, EndpointError> {
        if let Some(d) = self.store.declaration(identifier).await? {
            return Ok(d);
        }
        self.store
            .plugin(identifier)
            .await?
            .and_then(|p| p.remote_declaration)
            .ok_or(EndpointError::PluginNotFound)
    }

    async fn endpoint_declaration(
        &self,
        installation: &Installation,
    ) -> Result<EndpointDeclaration, EndpointError> {
        let declaration = self
            .plugin_declaration(&installation.plugin_unique_identifier)
            .await?;
        EndpointDeclaration::from_plugin_declaration(&declaration).ok_or(EndpointError::NoEndpoint)
    }

    async fn crypt(
        &self,
        opt: EncryptOpt,
        tenant_id: &str,
        user_id: &str,
        endpoint_id: &str,
        data: Map<String, Value>,
        configs: &[Value],
    ) -> Result<Map<String, Value>, EndpointError> {
        let request = EncryptRequest {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
            opt,
            namespace: NAMESPACE.to_owned(),
            identity: endpoint_id.to_owned(),
            data,
            config: configs.to_vec(),
        };
        self.inner
            .encrypt(&request)
            .await
            .map_err(|source| EndpointError::Encrypt {
                opt: opt.as_str(),
                source,
            })
    }

    /// The settings of `endpoint` in clear, for the plugin.
    pub async fn decrypt_settings(
        &self,
        endpoint: &EndpointRecord,
        configs: &[Value],
    ) -> Result<Map<String, Value>, EndpointError> {
        self.crypt(
            EncryptOpt::Decrypt,
            &endpoint.tenant_id,
            "",
            &endpoint.id,
            endpoint.settings.clone(),
            configs,
        )
        .await
    }

    /// Sets up a new endpoint for the tenant's installation of `identifier`
    /// and returns it.
    pub async fn setup(
        &self,
        tenant_id: &str,
        user_id: &str,
        identifier: &str,
        name: &str,
        settings: Map<String, Value>,
    ) -> Result<EndpointRecord, EndpointError> {
        let installation = self
            .store
            .installation_by_identifier(tenant_id, identifier)
            .await?
            .ok_or(EndpointError::PluginNotFound)?;
        let declaration = self.plugin_declaration(identifier).await?;
        let permission = Permission::from_json(
            declaration
                .pointer("/resource/permission")
                .unwrap_or(&Value::Null),
        );
        if !permission.allows_endpoint() {
            return Err(EndpointError::PermissionDenied);
        }
        let group = EndpointDeclaration::from_plugin_declaration(&declaration)
            .ok_or(EndpointError::NoEndpoint)?;
        config::validate(&settings, &group.settings).map_err(EndpointError::InvalidSettings)?;
        // The id is drawn first so the settings are encrypted under the
        // endpoint's identity before the row exists: a failed encryption
        // leaves nothing behind (the reference inserts first).
        let id = uuid::Uuid::new_v4().to_string();
        let encrypted = self
            .crypt(
                EncryptOpt::Encrypt,
                tenant_id,
                user_id,
                &id,
                settings,
                &group.settings,
            )
            .await?;
        let hook_id = new_hook_id();
        Ok(self
            .store
            .insert_endpoint(&NewEndpoint {
                id: &id,
                hook_id: &hook_id,
                tenant_id,
                user_id,
                plugin_id: &installation.plugin_id,
                name,
                settings: &encrypted,
            })
            .await?)
    }

    /// A page of endpoints with their settings decrypted then masked, and
    /// their plugin's endpoint declaration. With `plugin_id`, only that
    /// plugin's, and its installation must exist.
    pub async fn list(
        &self,
        tenant_id: &str,
        plugin_id: Option<&str>,
        page: i64,
        page_size: i64,
    ) -> Result<Vec<Value>, EndpointError> {
        let endpoints = self
            .store
            .list_endpoints(tenant_id, plugin_id, page, page_size)
            .await?;
        let mut out = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let installation = self
                .store
                .installation_by_plugin_id(tenant_id, &endpoint.plugin_id)
                .await?;
            let (settings, declaration) = match installation {
                None if plugin_id.is_some() => {
                    return Err(EndpointError::NotFound(
                        "failed to find plugin installation".into(),
                    ))
                }
                // An endpoint that outlived its plugin shows empty settings.
                None => (Map::new(), EndpointDeclaration::empty()),
                Some(installation) => {
                    let group = self.endpoint_declaration(&installation).await?;
                    let clear = self.decrypt_settings(&endpoint, &group.settings).await?;
                    (config::mask(&clear, &group.settings), group.raw)
                }
            };
            let mut item = serde_json::to_value(&endpoint).expect("records serialize");
            item["settings"] = Value::Object(settings);
            item["declaration"] = declaration;
            out.push(item);
        }
        Ok(out)
    }

    /// Renames an endpoint and replaces its settings. A secret sent back as
    /// the listing masked it keeps its stored value.
    pub async fn update(
        &self,
        tenant_id: &str,
        user_id: &str,
        endpoint_id: &str,
        name: &str,
        mut settings: Map<String, Value>,
    ) -> Result<(), EndpointError> {
        let endpoint = self
            .store
            .endpoint(tenant_id, endpoint_id)
            .await?
            .ok_or_else(|| EndpointError::NotFound("endpoint not found".into()))?;
        let installation = self
            .store
            .installation_by_plugin_id(tenant_id, &endpoint.plugin_id)
            .await?
            .ok_or_else(|| EndpointError::NotFound("failed to find plugin installation".into()))?;
        let group = self.endpoint_declaration(&installation).await?;
        let original = self.decrypt_settings(&endpoint, &group.settings).await?;
        config::restore_masked(&mut settings, &original, &group.settings);
        config::validate(&settings, &group.settings).map_err(EndpointError::InvalidSettings)?;
        let encrypted = self
            .crypt(
                EncryptOpt::Encrypt,
                tenant_id,
                user_id,
                endpoint_id,
                settings,
                &group.settings,
            )
            .await?;
        if !self
            .store
            .update_endpoint(tenant_id, endpoint_id, name, &encrypted)
            .await?
        {
            return Err(EndpointError::NotFound("endpoint not found".into()));
        }
        // Dify caches decrypted settings per endpoint; drop the old ones.
        self.crypt(
            EncryptOpt::Clear,
            tenant_id,
            user_id,
            endpoint_id,
            Map::new(),
            &group.settings,
        )
        .await?;
        Ok(())
    }

    /// Removes an endpoint and asks Dify to forget its cached settings.
    pub async fn remove(&self, tenant_id: &str, endpoint_id: &str) -> Result<(), EndpointError> {
        let endpoint = self
            .store
            .delete_endpoint(tenant_id, endpoint_id)
            .await?
            .ok_or(EndpointError::RemoveGone)?;
        // The reference sends `clear` with no config, which its own encrypt
        // helper then skips; the config is looked up here so Dify really
        // drops the cache when there are secrets.
        let configs = match self
            .store
            .installation_by_plugin_id(tenant_id, &endpoint.plugin_id)
            .await?
        {
            Some(installation) => self
                .endpoint_declaration(&installation)
                .await
                .map(|g| g.settings)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        self.crypt(
            EncryptOpt::Clear,
            tenant_id,
            "",
            endpoint_id,
            Map::new(),
            &configs,
        )
        .await?;
        Ok(())
    }

    /// Enables or disables an endpoint.
    pub async fn set_enabled(
        &self,
        tenant_id: &str,
        endpoint_id: &str,
        enabled: bool,
    ) -> Result<(), EndpointError> {
        self.store
            .set_endpoint_enabled(tenant_id, endpoint_id, enabled)
            .await?
            .ok_or_else(|| EndpointError::NotFound("endpoint not found".into()))?;
        Ok(())
    }
}
