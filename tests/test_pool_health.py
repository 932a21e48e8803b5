"""Reading configured upstream tokens: files with lines, commas, comments; env lists."""

from server.credentials.checks import configured_tokens, parse_tokens
from server.settings import load_settings


def test_parse_lines_commas_comments_and_duplicates():
    text = "# my tokens\ntok-a\n\ntok-b, tok-c  # work account\n tok-a ,tok-d\n#tok-e\n"
    assert parse_tokens(text) == ["tok-a", "tok-b", "tok-c", "tok-d"]


def test_file_and_env_together(tmp_path, monkeypatch):
    monkeypatch.delenv("ZAI_TOKENS", raising=False)
    file = tmp_path / "tokens.txt"
    file.write_text("tok-a\ntok-b,tok-c\n")
    settings = load_settings(
        _env_file=None, auth_token="k", auth_tokens_file=file, zai_tokens="tok-c, tok-z"
    )
    assert configured_tokens(settings) == ["tok-a", "tok-b", "tok-c", "tok-z"]


def test_tokens_a_header_cannot_carry_are_ignored():
    assert parse_tokens("tok-a\ntök-b, tok c\n\x00x,tok-d") == ["tok-a", "tok-d"]
