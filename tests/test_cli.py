"""The `emailservice` command: configuration errors, `check`, `db upgrade` from anywhere."""

from __future__ import annotations

from tests.support import free_port, run_cli


def test_missing_setting_stops_serve_with_one_line(env, tmp_path):
    settings = {k: v for k, v in env.items() if k != "JWT_SECRET"}
    result = run_cli(["serve"], settings, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "Error: JWT_SECRET is required but not set\n"
    assert "Traceback" not in result.stdout + result.stderr


def test_malformed_setting_in_dotenv_is_named(env, tmp_path):
    (tmp_path / ".env").write_text("API_PORT=eighty\n")
    result = run_cli(["worker"], env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: API_PORT must be an integer, not 'eighty'"


def test_environment_wins_over_dotenv(env, migrated, tmp_path):
    (tmp_path / ".env").write_text("JWT_SECRET=too-short\n")
    assert run_cli(["check"], env, cwd=tmp_path).returncode == 0
    without = {k: v for k, v in env.items() if k != "JWT_SECRET"}
    result = run_cli(["check"], without, cwd=tmp_path)
    assert "FAIL environment: JWT_SECRET must be at least 32 characters" in result.stdout


def test_check_passes_on_a_migrated_database(env, migrated, tmp_path):
    result = run_cli(["check"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "PASS environment",
        "PASS database",
        "PASS migrations",
        "PASS redis",
    ]


def test_check_fails_when_postgres_is_unreachable(env, tmp_path):
    dead = dict(env, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    result = run_cli(["check"], dead, cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL database" in result.stdout
    assert "PASS redis" in result.stdout


def test_check_fails_when_redis_is_unreachable(env, migrated, tmp_path):
    dead = dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = run_cli(["check"], dead, cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL redis" in result.stdout
    assert "PASS database" in result.stdout


def test_check_flags_pending_migrations_until_upgrade(env, fresh_database, tmp_path):
    settings = dict(env, DATABASE_URL=fresh_database)
    before = run_cli(["check"], settings, cwd=tmp_path)
    assert before.returncode == 1
    assert "FAIL migrations: database at none applied" in before.stdout
    # From a directory with no project files at all: migrations ship inside the package.
    upgrade = run_cli(["db", "upgrade"], settings, cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr
    after = run_cli(["check"], settings, cwd=tmp_path)
    assert after.returncode == 0, after.stdout
    assert "PASS migrations: at head" in after.stdout


def test_check_colours_its_lines():
    from click.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["check"], color=True, env={"JWT_SECRET": "x"})
    assert result.exit_code == 1
    assert "\x1b[31mFAIL\x1b[0m environment" in result.output


def test_worker_rejects_an_unknown_queue_by_name(env, tmp_path):
    result = run_cli(["worker", "send", "bogus"], env, cwd=tmp_path)
    assert result.returncode == 2
    assert "'bogus' is not a queue of this service" in result.stderr
