"""Neon's serverless protocols: SQL over HTTP and Postgres over WebSocket."""
