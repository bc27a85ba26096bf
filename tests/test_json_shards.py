"""A one-array JSON streamed into JSONL shards (no Spark: local files)."""

import json

import pytest

from vig_udf.spark.json_shards import JsonArrayError, stage_json_array


def _records(n):
    return [{"id": f"r{i}", "image": f"coco/{i}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nq{i} \u00e9"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(n)]


def test_the_array_becomes_shards_of_the_set_size_in_order(tmp_path):
    records = _records(23) + [7, {"id": 5, "score": 0.5}]  # a non-record element and a numeric id stay as they are
    (tmp_path / "in.json").write_text("\ufeff \n" + json.dumps(records, indent=1), encoding="utf-8")
    n = stage_json_array(None, str(tmp_path / "in.json"), str(tmp_path / "shards"), records_per_shard=4)
    shards = sorted((tmp_path / "shards").iterdir())
    assert n == len(records) == 25
    assert [p.name for p in shards] == [f"part-{i:05d}.jsonl" for i in range(7)]
    lines = [line for p in shards for line in p.read_text(encoding="utf-8").splitlines()]
    assert [len(p.read_text().splitlines()) for p in shards] == [4] * 6 + [1]
    assert [json.loads(line) for line in lines] == records


def test_an_empty_array_writes_no_shard(tmp_path):
    (tmp_path / "in.json").write_text("[]")
    assert stage_json_array(None, str(tmp_path / "in.json"), str(tmp_path / "s"), records_per_shard=2) == 0
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text, message", [('{"id": "x"}', "one JSON array"), ("", "one JSON array"),
                                           ('[{"id": "a"}, {"id": ', "after 1 elements")])
def test_a_file_that_is_not_one_array_is_refused(tmp_path, text, message):
    (tmp_path / "in.json").write_text(text)
    with pytest.raises(JsonArrayError, match=message):
        stage_json_array(None, f"file://{tmp_path / 'in.json'}", str(tmp_path / "s"), records_per_shard=2)
