"""A model-family adapter outside longctx (`--family plugins.chat_family:ChatFamily`): adding a
family is one module like this one, and one line in `longctx.registry.FAMILIES` to have it
chosen by model type instead of by name.

It serves any text model with its own prompt layout (a template around the document and the
question) and its own inputs: each host embeds the rows it runs and feeds `inputs_embeds` at
their true positions, as a family with extra inputs (a vision encoder) does.
"""

import torch

from longctx.models.family import TextFamily

DOCUMENT = "Document:\n{document}\n\n"
QUESTION = "Question: {question}\nAnswer:"


class ChatFamily(TextFamily):
    """Text with a prompt template; inputs as embeddings built on each host."""

    name = "chat"
    title = "chat template"

    def encode(self, tokenizer, model_dir, prompt):
        """The document part (with BOS) and the question part of the template."""
        doc_ids = tokenizer(DOCUMENT.format(document=prompt.document), add_special_tokens=True)["input_ids"]
        query_ids = tokenizer(QUESTION.format(question=prompt.question), add_special_tokens=False)["input_ids"]
        return doc_ids, query_ids, None

    def prefill_inputs(self, model, ctx, request):
        """inputs_embeds of the rows `ctx.method.local_inputs` gives this host, at their positions."""
        ids, positions = ctx.method.local_inputs(ctx.plan, ctx.rank, request.doc_ids, request.query_ids)
        embeds = model.get_input_embeddings()(torch.tensor([ids], device=model.device))
        return {"inputs_embeds": embeds, "position_ids": torch.tensor([positions], device=model.device)}
