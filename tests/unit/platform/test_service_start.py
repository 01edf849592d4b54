import gc
from dataclasses import dataclass

import pytest

from lineguard.service import start_service, tune_gc
from lineguard.settings import Settings, env_field


@dataclass(frozen=True)
class WidgetSettings(Settings):
    widget_batch: int = env_field(10)


def test_invalid_setting_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("LINEGUARD_WIDGET_BATCH", "lots")
    with pytest.raises(SystemExit) as exit_info:
        start_service(WidgetSettings)
    assert exit_info.value.code == 2
    assert "widget: invalid settings: LINEGUARD_WIDGET_BATCH='lots': expected an integer" in capsys.readouterr().err


def test_valid_settings_are_returned(monkeypatch):
    monkeypatch.setenv("LINEGUARD_WIDGET_BATCH", "25")
    assert start_service(WidgetSettings).widget_batch == 25


def test_tune_gc_freezes_start_up_objects_and_collects_the_young_generation_less_often():
    threshold = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # the interpreter's default, whatever ran before in this process
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
