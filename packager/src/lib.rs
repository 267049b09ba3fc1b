//! The packaging pipeline: a `.difypkg` becomes a deterministic AWS Lambda
//! artifact (plugin files, its Python dependencies and the `plugin-runner`
//! bootstrap), named in S3 by its content hash, which [`deploy`] uploads and
//! turns into a published Lambda function version.

pub mod artifact;
pub mod deploy;

pub use artifact::{
    build_artifact, Arch, Artifact, ArtifactInfo, BuildEvent, BuildOptions, BuildStep,
    PackagerError, ProgressFn, UploadMode, ARTIFACT_FILE, BOOTSTRAP_PATH, DEPS_DIR,
    MAX_UNZIPPED_BYTES, MAX_ZIPPED_DIRECT_BYTES,
};
