"""Chat prompts: a list of messages rendered with the tokenizer's chat template and split into
the document (the context) and the question, the way the document cache wants them.

Everything before the last user message is the context; the last user message (with the
template's generation prompt) is the question. So a conversation's earlier turns are a prefix
of its next request, and a follow-up resumes them from the cache (`longctx.doc_cache`). A
conversation of one user message has no earlier context: its rendered text is the document
and the generation prompt the question (its last token when the template adds none).
"""

from longctx.errors import LongCtxError

ROLES = ("system", "user", "assistant")


def message_text(message, index):
    """The text of message `index` ({"role", "content"}: a string or a list of {"type": "text",
    "text"} parts); LongCtxError naming what is wrong with it."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise LongCtxError(f"messages[{index}] needs a role of {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise LongCtxError(f"messages[{index}].content: only text parts are supported")
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise LongCtxError(f"messages[{index}].content must be a string or a list of text parts")
    return content


def encode_chat(tokenizer, messages):
    """(doc_ids, query_ids) of `messages` (a list of {"role", "content"}; the last from the
    user) rendered with `tokenizer`'s chat template. LongCtxError when the tokenizer has none
    or the messages are malformed."""
    if not getattr(tokenizer, "chat_template", None):
        raise LongCtxError("the model's tokenizer has no chat template; send a completion request "
                           "(document + prompt) instead")
    if not isinstance(messages, list) or not messages:
        raise LongCtxError("messages must be a non-empty list")
    plain = [{"role": message["role"], "content": message_text(message, index)}
             for index, message in enumerate(messages)]
    if plain[-1]["role"] != "user":
        raise LongCtxError("the last message must be the user's question")
    full = _render(tokenizer, plain, True)
    context = _render(tokenizer, plain[:-1], False) if len(plain) > 1 else ""
    if not context or not full.startswith(context):
        context = _render(tokenizer, plain, False)
    if not full.startswith(context):
        raise LongCtxError("the chat template renders earlier turns differently from the whole conversation")
    doc_ids = _ids(tokenizer, context)
    query_ids = _ids(tokenizer, full[len(context):])
    if not query_ids:
        doc_ids, query_ids = doc_ids[:-1], doc_ids[-1:]
    if not doc_ids:
        raise LongCtxError("the conversation is empty")
    return doc_ids, query_ids


def _render(tokenizer, messages, generation_prompt):
    """The template's text of `messages`; LongCtxError (its first line) when the template refuses
    them (templates raise on role orders their model does not take)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja2's TemplateError and the template's own raise_exception
        lines = str(exc).strip().splitlines()
        raise LongCtxError(f"the chat template refused the messages: {lines[0] if lines else type(exc).__name__}") \
            from None


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
