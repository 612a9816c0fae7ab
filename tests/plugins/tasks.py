"""An eval task outside longctx (`--tasks 'plugins.tasks:EchoNumber[value=17]'`): a `Task` class
with its own settings, registered by its path like a plug-in method."""

from dataclasses import dataclass

from longctx.eval import vocab
from longctx.eval.tasks import Sample, Task
from longctx.options import option


@dataclass(frozen=True)
class EchoSettings:
    value: int = option(42, "the number the document states")


class EchoNumber(Task):
    """Filler words, then one needle at the end stating `value`; the question asks it back."""

    name = "echo_number"
    Settings = EchoSettings

    def generate(self, rng, length, counter, settings):
        needle = vocab.NEEDLE.format(key="date", value=settings.value)
        document = " ".join(["the"] * max(1, length - 40)) + " " + needle
        return Sample(task=self.name, document=document, question=vocab.Q_SINGLE.format(key="date"),
                      answer=str(settings.value), answers=[str(settings.value)], length=0, depth=1.0)
