"""Settings: ``.env.example`` documents every one with its default; ``.env`` is read."""

from pathlib import Path

from server.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting_with_its_default(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    text = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in text.splitlines() if line and line[0] != "#"}
    assert names == {name.upper() for name in Settings.model_fields}
    documented = load_settings(_env_file=ROOT / ".env.example", auth_token="k")
    defaults = load_settings(_env_file=None, auth_token="k")
    assert documented == defaults


def test_dotenv_file_and_comma_lists(tmp_path, monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    env = tmp_path / ".env"
    env.write_text("AUTH_TOKENS=a, b ,c\nLISTEN_PORT=9090\nANONYMOUS_MODE=false\n")
    settings = load_settings(_env_file=env)
    assert settings.api_keys == ("a", "b", "c")
    assert settings.listen_port == 9090 and settings.anonymous_mode is False
