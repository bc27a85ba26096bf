"""Config overrides on the command line: nested keys, and keys that themselves contain dots."""

import pytest

from vig_udf.config import SqlConfig, load_config, override_key_parts


def test_a_quoted_part_sets_a_key_with_dots():
    cfg = load_config(SqlConfig, None, ['spark.conf."spark.driver.memory"=1g', "spark.app_name=x",
                                        'spark.conf."spark.sql.shuffle.partitions"="8"'])
    assert cfg.spark.conf == {"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "8"}
    assert cfg.spark.app_name == "x"


def test_a_quoted_key_adds_to_the_files_settings(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text('spark:\n  conf:\n    spark.ui.enabled: "false"\n')
    cfg = load_config(SqlConfig, path, ['spark.conf."spark.driver.memory"=2g'])
    assert cfg.spark.conf == {"spark.ui.enabled": "false", "spark.driver.memory": "2g"}


def test_an_unquoted_dotted_key_is_still_split_and_refused():
    with pytest.raises(ValueError):  # spark.conf.spark.driver.memory: nested sections, not a string setting
        load_config(SqlConfig, None, ["spark.conf.spark.driver.memory=1g"])


@pytest.mark.parametrize("key", ['spark.conf."unclosed', 'spark..conf', 'spark.conf."a"b', '""', 'a.'])
def test_malformed_keys_are_refused_with_the_position(key):
    with pytest.raises(ValueError, match="override key"):
        override_key_parts(key)
