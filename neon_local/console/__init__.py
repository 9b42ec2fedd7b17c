"""The console at /console: SQL as any app identity, RLS overview, policy templates and test matrix,
advisor, tokens, live request log. Loopback only, same-origin only, behind a per-instance secret.

  guard.py        who may use it: loopback Host and peer, the console's own Origin, the secret cookie
  app.py          the aiohttp routes and handlers
  identities.py   owner / test user / anonymous / ad-hoc claims, as the /sql path takes them
  catalog.py      the RLS overview, policy templates, the policy test matrix
  request_log.py  the live request log (also imported by the /sql path, so it imports nothing heavy)
"""
