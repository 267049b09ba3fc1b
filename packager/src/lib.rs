//! The packaging pipeline: a `.difypkg` becomes a deterministic AWS Lambda
//! artifact (plugin files, its Python dependencies and the `plugin-runner`
//! bootstrap), which [`deploy`] uploads to S3 and turns into a published
//! Lambda function version.

pub mod deploy;
