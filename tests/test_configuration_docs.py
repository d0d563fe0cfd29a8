"""docs/configuration.md is generated from the settings classes and kept current.

Every field must carry a description and a group (stt_worker.config.setting), the committed
page must equal what the generator renders now, and no secret's default may reach it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings

from stt_worker.config import Group, Settings, group_of, setting
from stt_worker.gateway.settings import GatewaySettings
from stt_worker.tools import configuration_docs
from stt_worker.tools.configuration_docs import (
    COMMAND,
    DOC_PATH,
    SECTIONS,
    env_names,
    render_page,
    rows,
    undocumented,
)

CLASSES = [settings_class for _, settings_class in SECTIONS]


def test_the_committed_page_is_current():
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.is_file() else ""
    assert committed == render_page(), (
        f"{DOC_PATH.name} is stale: run `{COMMAND}` (or `./dev docs`) and commit the result"
    )


def test_both_settings_classes_are_documented():
    assert list(CLASSES) == [Settings, GatewaySettings]


@pytest.mark.parametrize("settings_class", CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_a_description_and_a_group(settings_class: type[BaseSettings]):
    assert undocumented(settings_class) == []
    for name, field in settings_class.model_fields.items():
        assert field.description and field.description.strip(), name
        assert group_of(field), name


@pytest.mark.parametrize("settings_class", CLASSES, ids=lambda cls: cls.__name__)
def test_each_group_is_one_run_of_fields_in_the_source(settings_class: type[BaseSettings]):
    groups = [group_of(field) for field in settings_class.model_fields.values()]
    runs = [group for i, group in enumerate(groups) if i == 0 or group != groups[i - 1]]
    assert len(runs) == len(set(runs)), f"a group is split in the source: {runs}"


def test_the_worker_groups_follow_their_declared_order():
    used = list(dict.fromkeys(group_of(f) for f in Settings.model_fields.values()))
    assert used == [group.value for group in Group]


def test_every_variable_of_every_field_is_on_the_page():
    page = render_page()
    for settings_class in CLASSES:
        for name, field in settings_class.model_fields.items():
            names = env_names(field)
            assert names, name
            assert " or ".join(f"`{each}`" for each in names) in page, name


def test_alias_choices_are_listed_preferred_first():
    by_name = {row.variables[0]: row for row in rows(Settings)}
    assert by_name["NATS_CREDS_FILE"].variables == ("NATS_CREDS_FILE", "NATS_CREDS")
    assert by_name["STT_LOG_LEVEL"].variables == ("STT_LOG_LEVEL", "LOG_LEVEL")
    assert "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`" in (
        render_page()
    )


def test_defaults_types_and_bounds_are_rendered_as_an_operator_writes_them():
    by_name = {row.variables[0]: row for row in rows(Settings)}
    assert (by_name["STT_ENABLE_VAD"].default, by_name["STT_ENABLE_VAD"].kind) == (
        "`true`",
        "boolean",
    )
    assert by_name["WHISPER_BEAM_SIZE"].kind == "integer, ≥ 1, ≤ 10"
    assert by_name["STT_MAX_UTTERANCE_S"].kind == "number, > 1, ≤ 30"
    assert by_name["STT_MAX_SESSION_S"].default == "`14400`"
    assert by_name["WHISPER_HTTP_BACKOFF_S"].default == "`0.2`"
    assert by_name["WHISPER_SERVER_MAX_UPLOAD_BYTES"].default == "`26214400`"
    assert by_name["STT_ENDPOINT_MODE"].kind == "`fixed`, `adaptive` or `turn`"
    assert by_name["STT_LOG_FORMAT"].kind == "`auto`, `json` or `text`"
    assert by_name["NATS_TLS_CA_FILE"].kind == "path of an existing file"
    assert (by_name["NATS_TOKEN"].default, by_name["NATS_TOKEN"].kind) == (
        "unset",
        "secret string",
    )
    assert by_name["HOSTNAME"].default == "empty"


def test_a_field_without_a_description_or_a_group_is_refused():
    class Loose(BaseSettings):
        bare: int = Field(1, alias="LOOSE_BARE")
        blank: int = setting(2, "LOOSE_BLANK", group="Somewhere", description="")
        fine: int = setting(3, "LOOSE_FINE", group="Somewhere", description="Documented.")

    assert undocumented(Loose) == ["bare", "blank"]
    with pytest.raises(ValueError, match="bare, blank"):
        rows(Loose)
    with pytest.raises(ValueError, match="bare, blank"):
        render_page([("Loose", Loose)])


def test_a_secret_default_never_reaches_the_page():
    class Guarded(BaseSettings):
        key: SecretStr = setting(
            SecretStr("hunter2-default"), "GUARDED_KEY", group="Access", description="A key."
        )
        maybe: SecretStr | None = setting(
            "swordfish-default",
            AliasChoices("GUARDED_MAYBE", "GUARDED_OTHER"),
            group="Access",
            description="Another key.",
        )

    page = render_page([("Guarded", Guarded)])
    assert "hunter2" not in page and "swordfish" not in page
    assert [row.default for row in rows(Guarded)] == ["(hidden)", "(hidden)"]


def test_a_pipe_in_a_cell_does_not_split_the_table():
    class Piped(BaseSettings):
        choice: str = setting("a|b", "PIPED", group="G", description="One | the other.")

    (line,) = [each for each in render_page([("Piped", Piped)]).splitlines() if "PIPED" in each]
    assert line == "| `PIPED` | `a\\|b` | string | One \\| the other. |"


def test_a_type_the_generator_has_no_words_for_is_refused():
    class Odd(BaseSettings):
        ratio: complex = setting(1j, "ODD_RATIO", group="G", description="Odd.")

    with pytest.raises(TypeError, match="no words for the type"):
        rows(Odd)


def test_the_command_prints_the_page_and_writes_it(tmp_path: Path):
    printed = subprocess.run(
        [sys.executable, "-m", configuration_docs.__name__],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert printed.stdout == render_page()
    target = tmp_path / "configuration.md"
    assert configuration_docs.main(["--write", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_page()


def test_each_group_s_fields_live_in_the_config_module_named_for_it():
    # Settings declares no field itself: each group's are a base of their own, in a module
    # named for the group (Group.END_OF_TURN in stt_worker/config/end_of_turn.py).
    for name, field in Settings.model_fields.items():
        (owner,) = [
            base for base in Settings.__bases__ if name in getattr(base, "model_fields", {})
        ]
        assert owner.__module__ == f"stt_worker.config.{Group(group_of(field)).name.lower()}", name
