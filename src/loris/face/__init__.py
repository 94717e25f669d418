"""The API users call: `FastLanguageModel` / `FastModel` and the model object they return.

Above the trainers, export and generation in the import order (README "Architecture"): the face
calls them; nothing below imports the face.
"""

from loris.face.loader import FastLanguageModel, FastModel, is_bfloat16_supported
from loris.face.model import LorisModel

__all__ = ["FastLanguageModel", "FastModel", "LorisModel", "is_bfloat16_supported"]
