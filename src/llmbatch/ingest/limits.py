"""The checks of a validated input line that depend on the operator's limits (config.InputLimits).

`TaskLine` checks a line's shape; these check what a hostile submitter could use against the fleet: label
sets, extract schemas (size, depth, `$ref`s, see validate.schema_problem) and images (see image_inputs).
Each problem is one phrase that names the field and the setting that enforces the limit.
"""

from __future__ import annotations

from ..config import InputLimits
from ..image_inputs import image_problem
from ..models import TaskLine
from ..validate import schema_problem

__all__ = ["line_problem"]


def line_problem(task: TaskLine, limits: InputLimits) -> str | None:
    """Why this line must not run under `limits` (without the "line N: " prefix), or None."""
    if task.labels is not None and len(task.labels) > limits.max_labels_per_line:
        return (
            f"field 'labels' has {len(task.labels):,} labels, over the limit of {limits.max_labels_per_line:,} "
            "(max_labels_per_line)"
        )
    if task.json_schema is not None:
        problem = schema_problem(task.json_schema, max_bytes=limits.max_schema_bytes, max_depth=limits.max_schema_depth)
        if problem:
            return problem
    return _images_problem(task, limits)


def _images_problem(task: TaskLine, limits: InputLimits) -> str | None:
    if not task.images and not task.messages:
        return None
    images = [("images", i, url) for i, url in enumerate(task.images or ())]
    for m, message in enumerate(task.messages or ()):
        if isinstance(message.content, list):
            images += [
                (f"messages[{m}].content", p, part["image_url"]["url"])
                for p, part in enumerate(message.content)
                if part.get("type") == "image_url"
            ]
    if len(images) > limits.max_images_per_line:
        return (
            f"the line has {len(images)} images, over the limit of {limits.max_images_per_line} (max_images_per_line)"
        )
    for field, index, url in images:
        problem = image_problem(url, limits)
        if problem:
            return f"field '{field}[{index}]': the image {problem}"
    return None
