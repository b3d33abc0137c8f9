//! The decision against ext-authz's rules, on the host.
