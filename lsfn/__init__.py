"""lsfn: Label Studio ML backends as serverless HTTP functions.

What a function author imports, and the only names the template and README use::

    from lsfn import Batch, Model, Prediction, TaskError, TaskInput, coords, results

``Model`` is the class a function subclasses (``setup``, ``warmup``, ``predict``, ``fit``);
``Batch`` and ``TaskInput`` are what ``predict`` receives (tasks with their images fetched and
decoded); ``results`` builds the regions Label Studio stores, ``coords`` converts pixels and
percentages; a function's own environment variables are a ``FunctionSettings`` subclass it
names as ``settings_class`` (read into ``self.options``); raise ``TaskError`` (or return ``TaskFailure``) for one task that cannot be
predicted, and the others are still answered. ``create_app`` and ``http_target`` make a module
servable by ``lsfn serve`` and functions-framework.

The checkout's folders are this package's parts: ``lsfn.shared`` (the library and the runtime),
``lsfn.functions`` (the built-in functions), ``lsfn.deploy`` (deploying, connecting,
pre-annotating).
"""

from pathlib import Path as _Path

# In a checkout (an editable install maps the parts to the folders beside this one), the
# package's path names the checkout too: tools that look for a module's file under its top-level
# package's folders (Modal's, for the app module) then find them. An installed wheel holds the
# parts inside this folder and is left as it is.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "shared" / "runtime").is_dir() and (_checkout / "pyproject.toml").is_file() and str(_checkout) not in __path__:
    __path__.append(str(_checkout))

from lsfn.shared import coords, results  # noqa: E402
from lsfn.shared.image_decode import DecodedImage  # noqa: E402
from lsfn.shared.label_config import Control, LabelConfig, LabelConfigError  # noqa: E402
from lsfn.shared.protocol import TaskFailure  # noqa: E402
from lsfn.shared.runtime import Batch, Model, Prediction, Spec, TaskError, TaskInput, create_app, http_target, warmup_image  # noqa: E402
from lsfn.shared.settings import FunctionSettings, Settings  # noqa: E402
from lsfn.shared.weights import WeightsError  # noqa: E402

__all__ = [
    "Batch", "Control", "DecodedImage", "FunctionSettings", "LabelConfig", "LabelConfigError", "Model", "Prediction", "Settings", "Spec",
    "TaskError", "TaskFailure", "TaskInput", "WeightsError", "coords", "create_app", "http_target", "results", "warmup_image",
]  # fmt: skip
