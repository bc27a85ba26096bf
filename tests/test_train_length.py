"""One length limit: training takes the scores' max_length, and a lower training limit cuts sequences as LLaVA
does (the tokens past it, and their labels, dropped), counting what was cut."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import random_image, sample
from tests.test_end_of_turn import THREE_TURNS, _row
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.train.examples import IGNORE_INDEX, build_example


@pytest.fixture(scope="module")
def processor(tiny_checkpoints):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoints["llava"])


@pytest.fixture(scope="module")
def builder(processor):
    return InputBuilder(processor, prompt_format="llava_v1", image_pad="square")


def record():
    return sample("m", THREE_TURNS, random_image(64, 48, 0))


def test_a_limit_below_the_sequence_cuts_it_and_counts_the_supervised_tokens_lost(builder):
    full = build_example(builder, _row(record()), supervise_end_of_turn=True)
    labelled = np.nonzero(full.labels != IGNORE_INDEX)[0]
    limit = int(labelled[len(labelled) // 2]) + 1  # half the supervised tokens fit
    cut = build_example(builder, _row(record()), supervise_end_of_turn=True, max_length=limit)
    assert len(cut.seq) == len(cut.labels) == limit
    assert cut.seq.input_ids.tolist() == full.seq.input_ids[:limit].tolist()
    np.testing.assert_array_equal(cut.labels, full.labels[:limit])
    assert cut.cut_tokens == int((full.labels[limit:] != IGNORE_INDEX).sum()) > 0
    assert cut.n_supervised + cut.cut_tokens == full.n_supervised and cut.cut_reason is None
    eos = builder.tokenizer.eos_token_id
    assert cut.n_end_of_turn == int((cut.seq.input_ids == eos).sum()) < full.n_end_of_turn
    # a limit the sequence fits in changes nothing
    same = build_example(builder, _row(record()), supervise_end_of_turn=True, max_length=len(full.labels))
    assert same.cut_tokens == 0 and np.array_equal(same.labels, full.labels)


def test_a_cut_through_the_image_or_before_every_label_leaves_nothing_to_train(builder):
    full = build_example(builder, _row(record()), supervise_end_of_turn=True)
    ids = full.seq.input_ids.numpy()
    image = np.nonzero(np.isin(ids, list(builder.image_token_ids)))[0]
    through = build_example(builder, _row(record()), supervise_end_of_turn=True, max_length=int(image[3]))
    assert through.n_supervised == 0 and through.cut_tokens == full.n_supervised
    assert through.skip_reason().startswith("truncated: max_length=") and "image's tokens" in through.skip_reason()
    first = int(np.nonzero(full.labels != IGNORE_INDEX)[0][0])
    before = build_example(builder, _row(record()), supervise_end_of_turn=True, max_length=first)
    assert before.n_supervised == 0 and before.cut_tokens == full.n_supervised
    assert "cuts every selected token" in before.skip_reason()


def test_the_stream_reports_the_cut_samples(processor, builder, tmp_path):
    from vig_udf.train.data import TrainSetStream

    full = build_example(builder, _row(record()), supervise_end_of_turn=True)
    labelled = np.nonzero(full.labels != IGNORE_INDEX)[0]
    limit = int(labelled[-1])  # the last supervised token does not fit
    short = sample("s", [("Hi?", "Yes")], random_image(40, 40, 1))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([_row(record()), _row(short)]), path)
    stream = TrainSetStream(str(path), processor, batch_size=2, seed=0, max_length=limit,
                            prompt_format="llava_v1", image_pad="square")
    batch = next(iter(stream))
    assert batch["truncated"] == [("m", 1)] and batch["skipped"] == [] and int(batch["n_samples"]) == 2
    assert batch["input_ids"].shape[1] == limit


def test_training_takes_the_scores_limit_unless_told(tiny_checkpoints):
    from vig_udf.spark.train_job import training_conventions
    from vig_udf.train.settings import TrainSettings

    path = tiny_checkpoints["llava"]
    scores = {"base_model": path, "scorer_max_length": 300, "scorer_prompt_format": "llava_v1",
              "scorer_image_pad": "square"}
    settings, conventions = training_conventions(TrainSettings(base_model=path), scores)
    assert (settings.max_length, conventions["max_length_source"]) == (300, "scores")
    assert (settings.prompt_format, settings.image_pad) == ("llava_v1", "square")
    lower, conventions = training_conventions(TrainSettings(base_model=path, max_length=100), scores)
    assert (lower.max_length, conventions["max_length_source"]) == (100, "training.max_length")
    other, conventions = training_conventions(TrainSettings(base_model="another/model"), scores)
    assert other.max_length == 300  # one limit, whatever the model
    assert (other.prompt_format, conventions["prompt_format_source"]) == (None, "base_model")  # its own default
    unlimited, conventions = training_conventions(TrainSettings(base_model=path), {"base_model": path})
    assert unlimited.max_length is None and conventions["max_length_source"] == "none"
    with pytest.raises(ValueError, match="greater than 0"):
        TrainSettings(max_length=0)


@pytest.mark.slow
def test_a_training_run_reports_what_was_cut_and_what_end_of_turn_it_supervised(processor, builder, tiny_checkpoints,
                                                                                tmp_path):
    from vig_udf.train.settings import TrainSettings
    from vig_udf.train.trainer import train_selected

    full = build_example(builder, _row(record()), supervise_end_of_turn=True)
    limit = int(np.nonzero(full.labels != IGNORE_INDEX)[0][-1])  # the last </s> of "m" is cut
    rows = [_row(record()), _row(sample("s", [("Hi?", "Yes")], random_image(40, 40, 1)))]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    settings = TrainSettings(base_model=tiny_checkpoints["llava"], steps=2, batch_size=2, warmup_ratio=0.0,
                             checkpoint_every=0, max_length=limit, device="cpu")
    result = train_selected(settings, str(path), str(tmp_path / "run"))
    assert (result["truncated_samples"], result["truncated_tokens"]) == (1, 1)
    assert (result["prompt_format"], result["image_pad"], result["end_of_turn_text"]) == ("llava_v1", "square", "</s>")
    # per step: 3 end-of-turn tokens of "m" less the cut one, 1 of "s"
    assert result["end_of_turn_tokens"] == 2 * (2 + 1)
    # the trained model declares its prompt: scored later, it gets the same one by default
    from transformers import AutoConfig

    from vig_udf.scoring.formats import FORMATS

    declared = AutoConfig.from_pretrained(result["model_dir"]).vig_prompt
    assert declared == {"prompt_format": FORMATS["llava_v1"].model_dump(), "image_pad": "square"}
