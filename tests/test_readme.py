"""The README is the front door: it must list every setting and the two Quickstart commands."""

from pathlib import Path

from velocitymesh.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [f"VM_{n.upper()}" for n in Settings.model_fields if f"`VM_{n.upper()}`" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_quickstart_commands() -> None:
    assert "make run" in README and "make test" in README
