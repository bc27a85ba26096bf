"""Per-row status names shared by the scorer and the tables. Every input row gets exactly one."""

OK = "ok"
TEXT_ONLY = "text_only"  # no image: nothing to gain from it; not an error
IMAGE_UNREADABLE = "image_unreadable"  # missing file, corrupt or truncated bytes, not an image
INVALID_CONVERSATION = "invalid_conversation"  # empty, malformed roles, <image> count not matching
NO_ANSWER_TOKENS = "no_answer_tokens"  # no assistant turn, or assistant turns that tokenize to nothing
TRUNCATED = "truncated"  # the full sequence is longer than the scorer's max_length
TEMPLATE_MISMATCH = "template_mismatch"  # an answer could not be located in the chat template's text
MODEL_ERROR = "model_error"  # the forward pass raised on this sample alone

FAILURES = (
    IMAGE_UNREADABLE,
    INVALID_CONVERSATION,
    NO_ANSWER_TOKENS,
    TRUNCATED,
    TEMPLATE_MISMATCH,
    MODEL_ERROR,
)
ALL = (OK, TEXT_ONLY, *FAILURES)


class SampleError(Exception):
    """A sample-level failure: carries the status to record and a readable message."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
