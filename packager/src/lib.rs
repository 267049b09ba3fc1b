//! The packaging pipeline: a `.difypkg` becomes a deterministic AWS Lambda
//! artifact (plugin files, its Python dependencies and the `plugin-runner`
//! bootstrap). The pipeline itself arrives with the serverless runtime.
