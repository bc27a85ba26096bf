"""The notebooks' settings: Databricks widgets there, VIG_* environment variables elsewhere, and the notebook's
MLflow credentials put where the train job forwards them to the ranks."""

from __future__ import annotations

from types import SimpleNamespace

from vig_udf.notebook import forward_databricks_credentials, setting


class FakeWidgets:
    """The part of ``dbutils.widgets`` the notebooks use, with values a user typed into some widgets."""

    def __init__(self, typed: dict[str, str]):
        self.created, self.typed = {}, typed

    def text(self, name, default, label):
        self.created[name] = (default, label)

    def get(self, name):
        return self.typed.get(name, self.created[name][0])


def test_settings_are_widgets_on_databricks_and_environment_variables_elsewhere(monkeypatch):
    monkeypatch.setenv("VIG_LAKE", "/env/lake")
    monkeypatch.delenv("VIG_RECORDS", raising=False)
    assert setting(None, "lake", "lake", "Delta lake") == "/env/lake"
    assert setting(None, "records", None) is None and setting(None, "samples", "48") == "48"
    dbutils = SimpleNamespace(widgets=FakeWidgets({"lake": "/Volumes/main/vig/lake", "dtype": ""}))
    assert setting(dbutils, "lake", "lake", "Delta lake") == "/Volumes/main/vig/lake"  # the widget, not the env
    assert setting(dbutils, "samples", "48", "records") == "48" and setting(dbutils, "dtype", None) is None
    assert dbutils.widgets.created["lake"] == ("lake", "Delta lake")


def test_the_notebooks_credentials_are_set_for_the_training_ranks(monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", "")  # recorded, so the value the call sets is removed after the test
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.setenv("DATABRICKS_TOKEN", "already-set")
    value = lambda text: SimpleNamespace(get=lambda: text)  # noqa: E731 - Scala Options
    context = SimpleNamespace(apiUrl=lambda: value("https://adb-1.azuredatabricks.net"),
                              apiToken=lambda: value("dapi-notebook"))
    notebook = SimpleNamespace(getContext=lambda: context)
    dbutils = SimpleNamespace(notebook=SimpleNamespace(entry_point=SimpleNamespace(
        getDbutils=lambda: SimpleNamespace(notebook=lambda: notebook))))
    assert forward_databricks_credentials(dbutils) == ["DATABRICKS_HOST"]
    import os

    assert os.environ["DATABRICKS_HOST"] == "https://adb-1.azuredatabricks.net"
    assert os.environ["DATABRICKS_TOKEN"] == "already-set"  # a value the user set is kept
    assert forward_databricks_credentials(None) == []
