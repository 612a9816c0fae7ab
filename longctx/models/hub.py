"""Models named by Hugging Face Hub id (`--model Qwen/Qwen2.5-0.5B-Instruct`), resolved as
transformers resolves them: the local cache first (`HF_HOME`, `HF_HUB_CACHE`), a download of what
is missing unless `HF_HUB_OFFLINE=1`, at `revision` (a branch, tag or commit; default "main").

Only what longctx may open is fetched: configuration and tokenizer files and `*.safetensors`
weights, never code (`*.py`) or pickle weights. The snapshot directory then goes through the
same checks as any local model directory (`longctx.models.loading`: no code of its own, no
`auto_map`, safetensors only), so a Hub id is no way around them.
"""

import os
import re

from longctx.errors import LongCtxError

# Files a model directory needs and longctx may open: configs, tokenizers, chat templates, weights.
ALLOWED_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_id(model):
    """True when `model` names a Hub repository ('org/name' or 'name') rather than a path: it is
    no existing directory, has that form, and does not start like a path ('.', '/', '~')."""
    return bool(model) and not os.path.isdir(model) and not model.startswith((".", "/", "~")) \
        and REPO_ID.fullmatch(model) is not None and ".." not in model


def resolve_model(model, revision=None):
    """The local directory of `model`: a directory path as given; a Hub id as the directory of
    its cached snapshot at `revision` (downloaded first unless offline). Anything else is
    returned unchanged (the directory checks report it). LongCtxError, one line, when the id
    cannot be resolved: not in the cache while offline, no such repository or revision, no
    network. `revision` with a local directory is refused (a directory has no revisions)."""
    if not is_hub_id(model):
        if revision is not None and model and os.path.isdir(model):
            raise LongCtxError(f"--revision {revision} names a Hub revision, but --model {model!r} is a local directory")
        return model
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f" at revision {revision!r}" if revision else ""
    try:
        return snapshot_download(model, revision=revision, allow_patterns=list(ALLOWED_FILES))
    except RevisionNotFoundError:
        raise LongCtxError(f"model {model!r} on the Hugging Face Hub has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise LongCtxError(f"{model!r} is neither a local model directory nor a model on the Hugging Face Hub (a "
                           "private or gated one needs `hf auth login`)") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise LongCtxError(f"model {model!r}{at} is no local directory and not in the Hugging Face cache "
                               f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: download it once online, or "
                               "name a local directory") from None
        raise LongCtxError(f"model {model!r}{at} is no local directory and not in the Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}), and the Hub cannot be reached; is this machine online?") \
            from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise LongCtxError(f"cannot fetch model {model!r}{at} from the Hugging Face Hub: "
                           f"{text[0] if text else type(exc).__name__}") from None
