"""Per-row status names shared by the scorer and the tables. Every input row gets exactly one."""

OK = "ok"
TEXT_ONLY = "text_only"  # no image: nothing to gain from it; not an error
IMAGE_UNREADABLE = "image_unreadable"  # missing file, corrupt or truncated bytes, not an image
IMAGE_UNSUPPORTED = "image_unsupported"  # a readable image the processor refuses (e.g. aspect ratio above 200)
INVALID_CONVERSATION = "invalid_conversation"  # empty, malformed roles, <image> count not matching
NO_ANSWER_TOKENS = "no_answer_tokens"  # no assistant turn, or assistant turns that tokenize to nothing
TRUNCATED = "truncated"  # the full sequence is longer than the scorer's max_length
TEMPLATE_MISMATCH = "template_mismatch"  # an answer could not be located in the chat template's text
MODEL_ERROR = "model_error"  # the model or its processor raised on this sample alone (not out of memory)
NO_PARTNER = "no_partner"  # counterfactual=mismatched: no other sample with a different image to take it from

FAILURES = (
    IMAGE_UNREADABLE,
    IMAGE_UNSUPPORTED,
    INVALID_CONVERSATION,
    NO_ANSWER_TOKENS,
    TRUNCATED,
    TEMPLATE_MISMATCH,
    MODEL_ERROR,
    NO_PARTNER,
)
ALL = (OK, TEXT_ONLY, *FAILURES)


class SampleError(Exception):
    """A sample-level failure: carries the status to record and a readable message."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
