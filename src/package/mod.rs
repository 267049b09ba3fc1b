//! The `.difypkg` format: zip reading, manifest and declarations, checksum,
//! unique identifiers and signatures (PROTOCOL.md §6).
