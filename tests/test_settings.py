"""Settings resolve in one order (defaults < file < env < flags) and bad input names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from neon_local.settings import SCALARS, ConfigError, load_settings


def test_defaults_need_no_file_and_no_env(tmp_path):
    settings = load_settings(cwd=tmp_path, env={})
    assert settings.config_file is None
    assert (settings.http_port, settings.pg_port, settings.database, settings.owner) == (4444, 5444, "neondb", "neondb_owner")
    assert settings.resolved_data_dir == tmp_path.resolve() / ".neon-local"
    assert settings.jwt_roles == ("authenticated", "anonymous")
    assert set(settings.users) == {"alice", "bob"}
    assert [p.id for p in settings.providers] == ["neon-local"]


def test_file_then_env_then_flags(tmp_path):
    (tmp_path / "neon_local.toml").write_text('http_port = 5000\npg_port = 6000\ndatabase = "app"\n')
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    settings = load_settings({"pg_port": 7000}, cwd=sub, env={"NEON_LOCAL_HTTP_PORT": "5500"})
    assert settings.config_file == (tmp_path / "neon_local.toml").resolve()
    assert settings.project_dir == tmp_path.resolve()
    assert (settings.http_port, settings.pg_port, settings.database) == (5500, 7000, "app")


def test_users_roles_and_providers_from_file(tmp_path):
    (tmp_path / "neon_local.toml").write_text(
        'roles = ["admin"]\n'
        '[users.carol]\nemail = "carol@example.com"\norg_id = "org_1"\n'
        '[[jwks]]\nid = "clerk"\njwks_url = "https://example.clerk.accounts.dev/.well-known/jwks.json"\n'
        'role_names = ["authenticated", "editor"]\njwt_audience = "app"\n'
    )
    settings = load_settings(cwd=tmp_path, env={})
    assert settings.users == {"carol": {"email": "carol@example.com", "org_id": "org_1", "sub": "user_carol"}}
    assert [p.id for p in settings.providers] == ["neon-local", "clerk"]
    assert settings.providers[1].jwt_audience == "app"
    assert settings.jwt_roles == ("authenticated", "anonymous", "admin", "editor")
    assert settings.providers[0].role_names == ("authenticated", "anonymous", "admin")  # custom roles take built-in tokens


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "neon_local.toml").write_text('data_dir = "var/db"\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    assert load_settings(cwd=sub, env={}).resolved_data_dir == tmp_path / "var" / "db"


def test_every_setting_has_an_env_var_and_a_flag():
    for scalar in SCALARS:
        assert scalar.env == "NEON_LOCAL_" + scalar.name.upper()
        assert scalar.flag.startswith("--") and "_" not in scalar.flag
        assert scalar.help.endswith((".", ")"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("http_port = 'x'", "http_port must be a port number from 0 to 65535, got 'x'"),
        ("pg_port = 70000", "pg_port must be a port number from 0 to 65535, got 70000"),
        ("htp_port = 1", "unknown setting 'htp_port'. Known settings:"),
        ("compat = 'loose'", 'compat must be one of "neon", "extended", got \'loose\''),
        ("http_port = ", "is not valid TOML"),
        ("[[jwks]]\nid = 'x'", "(x) needs jwks_url or jwks_file"),
        ("[[jwks]]\nid = 'x'\njwks_url = 'https://a'\nurl = 1", "unknown keys ['url']"),
        ("roles = 'admin'", "roles must be a list of role names"),
        ("users = 3", "[users.NAME] tables must hold claims"),
    ],
)
def test_bad_config_names_the_key(tmp_path, content, message):
    (tmp_path / "neon_local.toml").write_text(content + "\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(cwd=tmp_path, env={})
    assert message in str(excinfo.value)
    assert str(tmp_path / "neon_local.toml") in str(excinfo.value)


def test_bad_env_var_is_named(tmp_path):
    with pytest.raises(ConfigError, match="environment variable NEON_LOCAL_EPHEMERAL: ephemeral must be true or false"):
        load_settings(cwd=tmp_path, env={"NEON_LOCAL_EPHEMERAL": "maybe"})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(cwd=tmp_path, env={}, config_file=Path(tmp_path / "nope.toml"))
