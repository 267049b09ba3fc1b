//! Plugin runtimes: the `PluginRuntime` trait, the line codec, sessions, and
//! the local, debug and serverless hosts.
