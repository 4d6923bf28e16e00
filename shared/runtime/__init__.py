"""The runtime every function is served by: the Model base class and the HTTP app around it."""

from lsfn.shared.runtime.app import Runtime, create_app, http_target
from lsfn.shared.runtime.errors import TaskError
from lsfn.shared.runtime.model import Batch, Model, Prediction, Spec, TaskInput, task_value, warmup_image

__all__ = ["Batch", "Model", "Prediction", "Runtime", "Spec", "TaskError", "TaskInput", "create_app", "http_target", "task_value", "warmup_image"]
