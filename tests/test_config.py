"""Settings and the session secret: refused when weak, written safely, rotatable."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from chatroom import cli
from chatroom.config import MIN_SECRET, SecretError, Settings, load_secret
from chatroom.web.security import Session, SessionSigner

GOOD = b"k" * MIN_SECRET


def serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`chatroom serve ARGV` up to the point of listening: its exit code and stderr."""
    code = cli.main(["serve", "--port", "1", "--host", "256.0.0.1", *argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("content", [b"", b"\n", b"short", b" " * 40, b"x" * (MIN_SECRET - 1)])
def test_an_empty_or_short_secret_file_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    secret.chmod(0o600)
    code, err = serve(["--secret-file", str(secret)], capsys)
    assert code == 2
    line = one_line(err)
    assert str(secret) in line
    assert "at least 32" in line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_short_secret_given_outright_refuses_to_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "flag":
        code, err = serve(["--secret", "hunter2"], capsys)
    else:
        monkeypatch.setenv("CHATROOM_SECRET", "hunter2")
        code, err = serve([], capsys)
    assert code == 2
    assert "at least 32" in one_line(err)


def test_an_unusable_secret_path_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a directory where the file should be
    code, err = serve(["--secret-file", str(tmp_path)], capsys)
    assert code == 2
    assert "directory" in one_line(err)
    # a directory that does not exist
    code, err = serve(["--secret-file", str(tmp_path / "nowhere" / "secret")], capsys)
    assert code == 2
    assert "cannot create" in one_line(err)
    # a path through a file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = serve(["--secret-file", str(blocker / "secret")], capsys)
    assert code == 2
    one_line(err)


def test_a_bad_environment_value_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATROOM_MAX_BODY", "lots")
    assert cli.main(["serve"]) == 2
    assert "CHATROOM_MAX_BODY" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--max-rooms-per-connection", "49", "at most 48"),
        ("--max-rooms-per-connection", "0", "at least 1"),
        ("--retention", "0", "at least 1"),
    ],
)
def test_a_value_outside_its_bounds_refuses_to_start(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, said: str
) -> None:
    assert cli.main(["serve", flag, value]) == 2
    line = one_line(capsys.readouterr().err)
    assert flag in line
    assert said in line


def test_a_generated_secret_is_long_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first, warnings = load_secret(None, str(path))
    assert warnings == []
    assert len(first) >= MIN_SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # no temp file is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
    again, _ = load_secret(None, str(path))
    assert again == first


def test_a_secret_file_others_can_read_is_warned_of(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(GOOD)
    path.chmod(0o644)
    secret, warnings = load_secret(None, str(path))
    assert secret == GOOD
    assert len(warnings) == 1
    assert "chmod 600" in warnings[0]


def test_settings_refuse_a_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Settings(secret=b"short")
    with pytest.raises(ValueError, match="at least 32"):
        Settings(secret=GOOD, old_secrets=(b"old",))


def test_load_secret_refuses_short_outright() -> None:
    with pytest.raises(SecretError):
        load_secret(b"x" * 10, None)


def test_rotation_old_secrets_verify_the_new_one_signs() -> None:
    old, new = b"o" * 40, b"n" * 40
    session = Session("sid-1", "alice")
    before = SessionSigner(old).sign(session)
    rotated = SessionSigner(new, [old])
    assert rotated.verify(before) == session
    # what it signs now, only the new secret verifies
    after = rotated.sign(session)
    assert SessionSigner(new).verify(after) == session
    assert SessionSigner(old).verify(after) is None
    # CSRF tokens of pages rendered before the rotation still hold
    assert rotated.csrf_ok(session, SessionSigner(old).csrf(session))
    # and once the old secret is dropped, its cookies are refused
    assert SessionSigner(new).verify(before) is None


class _Earlier(TimestampSigner):
    def get_timestamp(self) -> int:
        return int(time.time()) - 3600


def test_a_cookie_older_than_max_age_is_refused() -> None:
    session = Session("sid-1", "alice")
    old = URLSafeTimedSerializer([GOOD], salt="chatroom-session", signer=_Earlier)
    issued_an_hour_ago = old.dumps({"sid": session.sid, "user": session.user})
    assert SessionSigner(GOOD, max_age=7200).verify(issued_an_hour_ago) == session
    assert SessionSigner(GOOD, max_age=1800).verify(issued_an_hour_ago) is None


def test_every_setting_has_a_flag_and_the_workers_get_them_all() -> None:
    parser = cli.build_parser(env={})
    settings = Settings(
        secret=GOOD, port=1234, max_connections=7, allowed_hosts=("chat.example",),
        secure_cookies=True, rate_limit=2.5,
    )
    argv = cli.worker_argv(settings, "INFO")
    assert str(GOOD) not in " ".join(argv)  # the secret goes by the environment
    args = parser.parse_args(argv[3:])
    env = {"CHATROOM_SECRET": os.fsdecode(GOOD)}
    again, _ = cli.settings_from(args, env=env)
    assert again == settings


def test_help_shows_each_flag_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag, env in [
        ("--max-connections-per-address", "CHATROOM_MAX_CONNECTIONS_PER_ADDRESS"),
        ("--header-timeout", "CHATROOM_HEADER_TIMEOUT"),
        ("--trusted-proxy", "CHATROOM_TRUSTED_PROXIES"),
        ("--rate-limit", "CHATROOM_RATE_LIMIT"),
    ]:
        assert flag in out
        assert env in out
    assert "(default: 256)" in out


def test_the_readme_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out))
    flags -= {"--help", "--no-secure-cookies"}
    assert flags
    missing = sorted(f for f in flags if f"`{f}`" not in readme)
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("chatroom ")
