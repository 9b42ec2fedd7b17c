"""`neon-local codegen`: typed functions and TanStack Query hooks from annotated SQL files.

annotations reads the files, analysis (pglast) finds tables and outer-join sides, describe asks the running
Postgres for types and nullability, typescript writes the module. generate() ties them together.
"""
