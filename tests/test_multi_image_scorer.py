"""Multi-image records in the scorer: one ``<image>`` placeholder per image, every image replaced by each
counterfactual, per-image attribution, and a family that takes one image per sample refusing them per row.

VIG is checked against an independent computation: the processor's chat template and the model run by hand
(the answer's tokens found as what follows the generation prompt), without the scorer's input builder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import random_image
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import make_counterfactual
from vig_udf.scoring.options import ScorerOptions
from vig_udf.scoring.partners import assign_partners
from vig_udf.scoring.scorer import VIGScorer
from vig_udf.scoring.status import SampleError

QUESTION = "Which of the two pictures is brighter?"
ANSWER = "The second one, it has more light."
MULTI_IMAGE_FAMILIES = ["qwen2_vl", "idefics3"]


def two_image_record(sample_id: str = "m", seed: int = 0) -> dict:
    return {"id": sample_id, "image": [random_image(48, 40, seed), random_image(40, 56, seed + 1)],
            "conversations": [{"from": "human", "value": f"<image>\n<image>\n{QUESTION}"},
                              {"from": "gpt", "value": ANSWER}]}


def test_placeholders_must_match_the_images_and_both_counts_are_named():
    turns = [{"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "No"}]
    assert parse_conversation(turns, n_images=2).n_images == 2
    with pytest.raises(SampleError, match=r"has 3 images but 2 <image> placeholders \(expected 3\)"):
        parse_conversation(turns, n_images=3)
    with pytest.raises(SampleError, match=r"has an image but 2 <image> placeholders \(expected 1\)"):
        parse_conversation(turns, has_image=True)


def test_a_lone_image_goes_first_and_several_in_a_turn_stay_where_they_are():
    turns = [{"from": "human", "value": "Look: <image>"}, {"from": "gpt", "value": "Yes"},
             {"from": "human", "value": "Now <image>\nagainst\n<image>\nwhich?"}, {"from": "gpt", "value": "Left"}]
    conv = parse_conversation(turns, n_images=3)
    first = conv.to_messages(placement="first")
    assert first[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Look:"}]
    assert first[2]["content"] == [{"type": "text", "text": "Now "}, {"type": "image"},
                                   {"type": "text", "text": "against"}, {"type": "image"},
                                   {"type": "text", "text": "which?"}]
    second_removed = conv.to_messages(with_image=(True, False, True), placement="first")
    assert [p["type"] for p in second_removed[2]["content"]] == ["text", "text", "image", "text"]
    assert all(p["type"] == "text" for m in conv.to_messages(with_image=False) for p in m["content"])


def independent_answer_logp(checkpoint: str, images: list, question: str, answer: str) -> tuple[np.ndarray, list]:
    """log p of the answer's tokens with ``images`` (one image item each, before the question; none: no image),
    computed with the processor's chat template and the model directly."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    user = {"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True)
    full = processor.apply_chat_template([user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
    assert full.startswith(prompt)
    bos = processor.tokenizer.bos_token
    special = {"add_special_tokens": False} if bos and full.startswith(bos) else {}
    kwargs = {"images": [images], **special} if images else special
    prompt_ids = processor(text=[prompt], return_tensors="pt", **kwargs)["input_ids"][0]
    enc = processor(text=[full], return_tensors="pt", **kwargs)
    ids = enc["input_ids"][0]
    assert torch.equal(ids[:len(prompt_ids)], prompt_ids)
    answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(**enc).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    positions = range(start, start + len(answer_ids))
    got_ids = ids[start:start + len(answer_ids)].tolist()
    return np.array([logp[p - 1, ids[p]].item() for p in positions]), got_ids


@pytest.mark.parametrize("family", MULTI_IMAGE_FAMILIES)
def test_two_image_vig_equals_an_independent_two_pass_computation(tiny_checkpoints, family):
    record = two_image_record()
    scorer = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactuals=["blur", "drop"],
                                       image_placement="inline", image_attribution=True, dtype="float32")
    results = scorer.score_all([record])
    images = scorer._load_all(record["image"])
    real, real_ids = independent_answer_logp(tiny_checkpoints[family], images, QUESTION, ANSWER)
    blurred = [make_counterfactual(im, "blur", seed_key="m") for im in images]
    expected = {"blur": independent_answer_logp(tiny_checkpoints[family], blurred, QUESTION, ANSWER)[0],
                "drop": independent_answer_logp(tiny_checkpoints[family], [], QUESTION, ANSWER)[0]}
    for cf, cf_logp in expected.items():
        got = results[cf][0]
        assert got.status == "ok", got.error
        assert got.token_ids.tolist() == real_ids
        np.testing.assert_allclose(got.logp_with, real, atol=1e-5)
        np.testing.assert_allclose(got.token_vig, real - cf_logp, atol=1e-5)
        assert got.vig == pytest.approx(float(np.mean(real - cf_logp)), abs=1e-5)
        assert got.image_vig.shape == (2,)
    assert scorer.forwarded == 1 + 2 + 2 * 2  # one real pass, two counterfactuals, two attribution passes each


@pytest.mark.parametrize("family", MULTI_IMAGE_FAMILIES)
def test_image_vig_is_the_vig_of_each_image_replaced_alone(tiny_checkpoints, family):
    record = two_image_record(seed=4)
    images = list(record["image"])
    attributed = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactual="blur", image_placement="inline",
                                           image_attribution=True, dtype="float32").score([record])[0]
    plain = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactual="drop", image_placement="inline",
                                      dtype="float32")
    blurred = [make_counterfactual(im, "blur", seed_key="m") for im in images]
    own = plain.score([record])[0]
    under_images = {"id": record["id"], "images": images, "conversations": record["conversations"]}  # Mantis's key
    assert plain.score([under_images])[0].vig == pytest.approx(own.vig, abs=1e-6)
    for k in range(2):
        swapped = plain.score([{**record, "image": [blurred[j] if j == k else im for j, im in enumerate(images)]}])[0]
        assert attributed.image_vig[k] == pytest.approx(float(np.mean(own.logp_with - swapped.logp_with)), abs=1e-5)
    everything = plain.score([{**record, "image": blurred}])[0]
    assert attributed.vig == pytest.approx(float(np.mean(own.logp_with - everything.logp_with)), abs=1e-5)


def test_mismatched_replaces_every_image_with_the_partner_image(tiny_checkpoints):
    records = assign_partners([two_image_record("m", 0), two_image_record("n", 10)], seed=0)
    assert records[0]["counterfactual_partner"] == "n"
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["qwen2_vl"], counterfactual="mismatched", dtype="float32")
    got = scorer.score(records)[0]
    plain = VIGScorer.from_pretrained(tiny_checkpoints["qwen2_vl"], counterfactual="drop", dtype="float32")
    partner_image = records[1]["image"][0]
    swapped = plain.score([{**records[0], "image": [partner_image, partner_image]}])[0]
    assert got.status == "ok" and got.counterfactual_partner == "n"
    assert got.vig == pytest.approx(float(np.mean(got.logp_with - swapped.logp_with)), abs=1e-5)


def test_a_family_of_one_image_per_sample_refuses_two_per_row_and_a_bad_second_image_is_named(tiny_checkpoints):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="blur", dtype="float32")
    assert scorer.options.prompt_format != "template"  # LLaVA-1.5's own conversation format
    one = {**two_image_record("one"), "image": [random_image(40, 40, 2)],
           "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red"}]}
    bad = {**two_image_record("bad"), "image": [random_image(40, 40, 2), "/nonexistent/second.png"]}
    results = {r.sample_id: r for r in scorer.score([two_image_record("two"), one, bad])}
    assert results["two"].status == "image_unsupported"
    assert "2 images" in results["two"].error and "prompt_format=llava_v1" in results["two"].error
    assert results["one"].status == "ok"  # a list of one image is the image itself
    assert results["bad"].status == "image_unreadable" and results["bad"].error.startswith("image 2 of 2: ")


def test_image_attribution_is_part_of_the_identity_only_when_on():
    assert "image_attribution" not in ScorerOptions().identity_options()
    assert ScorerOptions(image_attribution=True).identity_options()["image_attribution"] is True


def independent_turn_logps(checkpoint: str, turns: list[tuple[int, str, str]], images: list) -> tuple[list, list]:
    """Per answer turn, log p of its tokens and their ids, for a conversation of (images in the turn, question,
    answer) turns whose images precede the question, by the chat template and the model run by hand: an answer's
    tokens are those between the template's generation prompt for the conversation up to its question and the end
    of the answer, less a leading token that is only the space before the answer."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    messages, used = [], 0
    starts, answers = [], []
    bos = processor.tokenizer.bos_token

    def encode(text, n):
        special = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
        kwargs = {"images": [images[:n]], **special} if n else special
        return processor(text=[text], return_tensors="pt", **kwargs)

    for n, question, answer in turns:
        messages.append({"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": question}]})
        used += n
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        start = len(encode(prompt, used)["input_ids"][0])
        starts.append(start)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        full = processor.apply_chat_template(messages)
        assert full.startswith(prompt)
        through_answer = full[:full.index(answer, len(prompt)) + len(answer)]  # a template may put a space first
        answers.append(len(encode(through_answer, used)["input_ids"][0]) - start)  # the answer's tokens in context
    enc = encode(processor.apply_chat_template(messages), used)
    ids = enc["input_ids"][0]
    with torch.no_grad():
        logp = torch.log_softmax(model(**enc).logits[0].float(), dim=-1)
    out_logp, out_ids = [], []
    for start, n in zip(starts, answers):
        while n and not processor.tokenizer.decode([int(ids[start])]).strip():  # a space before the answer alone
            start, n = start + 1, n - 1
        out_logp.append(np.array([logp[p - 1, ids[p]].item() for p in range(start, start + n)]))
        out_ids.append(ids[start:start + n].tolist())
    return out_logp, out_ids


@pytest.mark.parametrize("family", MULTI_IMAGE_FAMILIES)
def test_images_in_a_later_turn_are_aligned_against_an_independent_computation(tiny_checkpoints, family):
    images = [random_image(48, 40, 20), random_image(40, 56, 21), random_image(56, 48, 22)]
    record = {"id": "turns", "image": images,
              "conversations": [{"from": "human", "value": "<image>\n<image>\nCompare them."},
                                {"from": "gpt", "value": "The first is darker."},
                                {"from": "human", "value": "<image>\nAnd this one?"},
                                {"from": "gpt", "value": "It is the brightest of the three."}]}
    scorer = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactuals=["blur", "drop"],
                                       image_placement="inline", image_attribution=True, dtype="float32")
    results = scorer.score_all([record])
    turns = [(2, "Compare them.", "The first is darker."), (1, "And this one?", "It is the brightest of the three.")]
    real, real_ids = independent_turn_logps(tiny_checkpoints[family], turns, images)
    blurred = [make_counterfactual(im, "blur", seed_key="turns" if k == 0 else f"turns#{k}")
               for k, im in enumerate(images)]
    blur, _ = independent_turn_logps(tiny_checkpoints[family], turns, blurred)
    dropped, _ = independent_turn_logps(tiny_checkpoints[family], [(0, q, a) for _, q, a in turns], [])
    for cf, expected in (("blur", blur), ("drop", dropped)):
        got = results[cf][0]
        assert got.status == "ok", got.error
        assert got.token_ids.tolist() == real_ids[0] + real_ids[1]
        np.testing.assert_allclose(got.logp_with, np.concatenate(real), atol=1e-5)
        np.testing.assert_allclose(got.token_vig, np.concatenate(real) - np.concatenate(expected), atol=1e-5)
        assert got.image_vig.shape == (3,) and np.isfinite(got.image_vig).all()
