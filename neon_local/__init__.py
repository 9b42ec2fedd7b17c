"""neon-local: an offline emulator of Neon's row-level-security stack.

Map of the package (one folder per part):
  postgres/    find binaries, run the cluster, shape it like a Neon branch, the pg_session_jwt stub
  auth/        signing keys, the built-in issuer, external JWKS providers, JWT verification (Neon's rules)
  wire/        sans-io Postgres wire codec (server side)
  proxy/       Postgres over TCP (TLS, JWT in the password field), sessions, cancellation
  serverless/  SQL over HTTP (POST /sql) and the WebSocket adapter over the proxy session
  control_plane.py  the Postgres-side work every client path shares (credentials, JWT sessions)
  errors.py    NeonLocalError, the one base of neon-local's own errors
  app.py       the Emulator object that starts and stops all of it in one asyncio process
  cli/         the neon-local command
  pytest_plugin.py  fixtures for apps' test suites
"""

__version__ = "0.1.0"
