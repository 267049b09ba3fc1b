//! The daemon's shared state, built once at start-up and handed to every
//! route: settings, store, blob storage, signature keys, the package service
//! and the installer.

use std::sync::Arc;

use crate::backwards::{InnerApiClient, InnerApiConfig, InnerApiError, PluginStorage};
use crate::cluster::{BuildScope, Cluster};
use crate::install::lambda_artifact::PackagerBuilder;
use crate::install::local::LocalInstallStep;
use crate::install::packages::{PackageSettings, Packages};
use crate::install::serverless::{
    ArtifactBuilder, AwsClients, ServerlessInstallStep, ServerlessTarget,
};
use crate::install::{InstallStep, Installer};
use crate::package::{PackageError, SignatureKeys};
use crate::runtime::serverless::ServerlessConfig;
use crate::runtime::{LocalHost, Registry};
use crate::settings::{DatabaseTarget, Platform, Settings, StorageType};
use crate::storage::{LocalStorage, S3Storage, Storage};
use crate::store::{SqlKvStore, Store, StoreError};

/// Why the state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AppStateError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load signature keys: {0}")]
    Keys(#[from] PackageError),
    #[error("cannot build the Dify inner API client: {0}")]
    InnerApi(#[from] InnerApiError),
    #[error("cannot register deployed Lambda functions: {0}")]
    Serverless(String),
    #[error("cannot prepare storage at {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a request handler needs, behind one `Arc`: a handler, a
/// middleware and a session each hold a copy, so a clone is one reference
/// count rather than one per field. Fields read through `Deref`; a write
/// (`state.installer = …`, used by tests) copies the fields first if the
/// state is shared.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut AppParts {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct AppParts {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub storage: Arc<dyn Storage>,
    pub keys: Arc<SignatureKeys>,
    pub packages: Arc<Packages>,
    pub installer: Arc<Installer>,
    /// Running plugin runtimes, whatever their host.
    pub registry: Arc<Registry>,
    /// Dify's inner API, for plugins' backwards calls. Built once: it holds
    /// the connection pool.
    pub inner_api: InnerApiClient,
    /// The plugins' key/value storage, over the store's database.
    pub plugin_storage: PluginStorage,
    /// The local platform's install step (PLATFORM=local), which also
    /// relaunches installed plugins when the daemon starts.
    pub local: Option<Arc<LocalInstallStep>>,
    /// The serverless platform's install step (PLATFORM=serverless).
    pub serverless: Option<Arc<ServerlessInstallStep>>,
    /// This daemon as a node among the replicas sharing the database.
    pub cluster: Arc<Cluster>,
}

/// Which install step the state is built with.
enum StepChoice {
    /// A given step (tests, other platforms).
    Given(Arc<dyn InstallStep>),
    /// The local platform's step over this host.
    Local(LocalHost),
    /// The serverless platform's step: artifacts from `builder`, deployed
    /// through `clients`.
    Serverless {
        builder: Arc<dyn ArtifactBuilder>,
        clients: AwsClients,
    },
}

impl AppState {
    /// Opens the store (creating the SQLite folder or the PostgreSQL database
    /// when missing), runs migrations, prepares local storage and fails the
    /// install tasks a previous daemon left unfinished. With PLATFORM=local
    /// installs launch plugins as child processes; otherwise they use the
    /// no-op step.
    pub async fn build(settings: Settings) -> Result<Self, AppStateError> {
        let choice = match settings.platform {
            Platform::Local => StepChoice::Local(LocalHost::from_settings(&settings)),
            Platform::Serverless => StepChoice::Serverless {
                builder: Arc::new(PackagerBuilder::from_settings(&settings)),
                clients: AwsClients::from_settings(&settings).await,
            },
        };
        Self::build_inner(settings, choice).await
    }

    /// [`AppState::build`] with the runtime's install step.
    pub async fn build_with_step(
        settings: Settings,
        step: Arc<dyn InstallStep>,
    ) -> Result<Self, AppStateError> {
        Self::build_inner(settings, StepChoice::Given(step)).await
    }

    /// [`AppState::build`] on the serverless platform: packages and
    /// artifacts in S3 (when PLUGIN_STORAGE_TYPE=aws_s3), plugins deployed
    /// as Lambda functions built by `builder`. Recorded functions are
    /// registered at once.
    pub async fn build_serverless(
        settings: Settings,
        builder: Arc<dyn ArtifactBuilder>,
        clients: AwsClients,
    ) -> Result<Self, AppStateError> {
        Self::build_inner(settings, StepChoice::Serverless { builder, clients }).await
    }

    /// [`AppState::build`] on the local platform with an explicit host
    /// (custom timings, interpreter or uv).
    pub async fn build_local(settings: Settings, host: LocalHost) -> Result<Self, AppStateError> {
        Self::build_inner(settings, StepChoice::Local(host)).await
    }

    async fn build_inner(settings: Settings, choice: StepChoice) -> Result<Self, AppStateError> {
        let url = match settings
            .database_target()
            .map_err(AppStateError::Settings)?
        {
            DatabaseTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseTarget::Postgres(url) => url.expose().to_owned(),
        };
        let store = Store::connect(&url, settings.db_max_open_conns).await?;
        let build_scope = match settings.platform {
            // Lambda functions and artifacts are shared by every node.
            Platform::Serverless => BuildScope::Lambda,
            Platform::Local => BuildScope::WorkingPath(settings.working_path()),
        };
        let cluster = Arc::new(Cluster::new(
            &settings.cluster,
            store.backend(),
            build_scope,
        ));
        cluster.register(&store).await?;
        let root = &settings.plugin_storage_local_root;
        std::fs::create_dir_all(root).map_err(|source| AppStateError::Storage {
            path: root.display().to_string(),
            source,
        })?;
        let storage: Arc<dyn Storage> = match settings.plugin_storage_type {
            StorageType::Local => Arc::new(LocalStorage::new(root)),
            StorageType::AwsS3 => {
                let s3 = match &choice {
                    StepChoice::Serverless { clients, .. } => clients.s3.clone(),
                    _ => {
                        let sdk = crate::storage::aws_sdk_config(&settings).await;
                        crate::storage::s3_client(&sdk, &settings)
                    }
                };
                let bucket = settings.plugin_storage_oss_bucket.clone().ok_or_else(|| {
                    AppStateError::Settings(
                        "PLUGIN_STORAGE_OSS_BUCKET is required when PLUGIN_STORAGE_TYPE=aws_s3"
                            .into(),
                    )
                })?;
                Arc::new(S3Storage::new(
                    s3,
                    bucket,
                    settings.plugin_storage_s3_prefix.clone(),
                ))
            }
        };
        let keys = Arc::new(if settings.third_party_signature_verification_enabled {
            SignatureKeys::from_files(&settings.third_party_signature_verification_public_keys)?
        } else {
            SignatureKeys::official()
        });
        let packages = Arc::new(Packages::new(
            store.clone(),
            storage.clone(),
            keys.clone(),
            PackageSettings {
                max_package_size: settings.max_plugin_package_size,
                max_bundle_size: settings.max_bundle_package_size,
                force_verifying_signature: settings.force_verifying_signature,
                package_prefix: settings.plugin_package_cache_path.clone(),
                media_prefix: settings.plugin_media_cache_path.clone(),
            },
        ));
        let runtime_type = match settings.platform {
            Platform::Local => "local",
            Platform::Serverless => "serverless",
        };
        let registry = Arc::new(Registry::new());
        let mut serverless = None;
        let (step, local) = match choice {
            StepChoice::Given(step) => (step, None),
            StepChoice::Serverless { builder, clients } => {
                let step = Arc::new(ServerlessInstallStep::new(
                    store.clone(),
                    storage.clone(),
                    registry.clone(),
                    builder,
                    clients,
                    ServerlessTarget::from_settings(&settings),
                    ServerlessConfig::from_settings(&settings),
                    settings.plugin_package_cache_path.clone(),
                ));
                let n = step
                    .register_installed()
                    .await
                    .map_err(|e| AppStateError::Serverless(e.to_string()))?;
                if n > 0 {
                    tracing::info!(count = n, "registered deployed Lambda functions");
                }
                serverless = Some(step.clone());
                (step as Arc<dyn InstallStep>, None)
            }
            StepChoice::Local(host) => {
                let local = Arc::new(LocalInstallStep::new(
                    host,
                    storage.clone(),
                    registry.clone(),
                    settings.working_path(),
                    settings.plugin_package_cache_path.clone(),
                    settings.max_plugin_package_size,
                ));
                (local.clone() as Arc<dyn InstallStep>, Some(local))
            }
        };
        let step: Arc<dyn InstallStep> = Arc::new(crate::cluster::leases::LockedStep::new(
            step,
            store.clone(),
            cluster.clone(),
        ));
        let installer = Arc::new(
            Installer::new(
                store.clone(),
                step,
                runtime_type,
                settings.plugin_package_cache_path.clone(),
            )
            .with_install_timeout(settings.install_timeout())
            .with_lease(cluster.node_id(), cluster.options().node_timeout),
        );
        installer.recover().await?;
        let inner_api = InnerApiClient::new(InnerApiConfig::from_settings(&settings))?;
        let plugin_storage = PluginStorage::new(
            Arc::new(SqlKvStore::new(store.clone())),
            crate::backwards::storage::DEFAULT_MAX_STORAGE_SIZE,
        );
        Ok(Self(Arc::new(AppParts {
            settings: Arc::new(settings),
            store,
            storage,
            keys,
            packages,
            installer,
            registry,
            inner_api,
            plugin_storage,
            local,
            serverless,
            cluster,
        })))
    }
}
