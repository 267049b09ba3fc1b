//! Install tasks, upgrades and uninstalls.
