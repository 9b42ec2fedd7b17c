"""The Postgres engine: binaries, the cluster, its Neon-shaped bootstrap, and the pg_session_jwt stub."""
