"""A null model function: fetches nothing, infers nothing, answers one fixed box per task.

bench/overhead.py serves it with `lsfn serve` to measure what the runtime itself costs per
request; its baseline twin (the same answer from label-studio-ml-backend) lives there too.
"""

from __future__ import annotations

from collections.abc import Sequence

from lsfn.shared import results
from lsfn.shared.runtime import Batch, Model, Prediction, create_app, http_target

# Names of the label config the benchmark sends (tests/data/ls-1.23/req-0013-POST-predict.json).
FROM_NAME, TO_NAME, LABEL = "label", "image", "Cat"
SIZE = (640, 480)
BOX = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0}
SCORE = 0.5


class NullModel(Model):
    model_version = "null-1"
    fetch_objects = frozenset()  # the task images are never downloaded

    def predict(self, batch: Batch) -> Sequence[Prediction]:
        return [
            results.prediction([results.rectangle(FROM_NAME, TO_NAME, LABEL, BOX, size=SIZE, score=SCORE)])
            for _ in batch.tasks
        ]


app = create_app(NullModel)
handler = http_target(app)
