"""What the notebooks need to run the same way on Databricks and as plain Python.

On Databricks a notebook's settings are widgets (``dbutils.widgets``), shown above the notebook and set per run
or per job task; elsewhere the same settings come from ``VIG_<NAME>`` environment variables. Training ranks on
executors do not inherit the notebook's MLflow credentials: :func:`forward_databricks_credentials` puts the
notebook's host and token into the environment, from which the train job forwards them
(``mlflow.forward_env``).
"""

from __future__ import annotations

import os


def setting(widgets, name: str, default: str | None, label: str | None = None) -> str | None:
    """The value of the notebook setting ``name``: a text widget on Databricks (``widgets`` is the notebook's
    ``dbutils``; the widget is created with ``default``), else ``$VIG_<NAME>``, else ``default``. An empty value
    is the default."""
    if widgets is not None:
        widgets.widgets.text(name, default or "", label or name)
        value = widgets.widgets.get(name)
    else:
        value = os.environ.get(f"VIG_{name.upper()}")
    return value if value not in (None, "") else default


def forward_databricks_credentials(widgets) -> list[str]:
    """Set ``DATABRICKS_HOST`` and ``DATABRICKS_TOKEN`` from the notebook's context when they are not set, so the
    train job can pass them to the ranks; returns the names it set (none off Databricks)."""
    if widgets is None:
        return []
    context = widgets.notebook.entry_point.getDbutils().notebook().getContext()
    found = {"DATABRICKS_HOST": context.apiUrl().get(), "DATABRICKS_TOKEN": context.apiToken().get()}
    missing = {name: value for name, value in found.items() if not os.environ.get(name)}
    os.environ.update(missing)
    return sorted(missing)
